#!/usr/bin/env bash
# Hands the operator SSH key (an environment secret) to the two things that use it on the runner:
#  - the libvirt providers (qemu+ssh://...): they authenticate through ssh-agent and check every
#    hop (hypervisor, and the bastion when ~/.ssh/config names it as ProxyJump) against
#    ~/.ssh/known_hosts, which this writes from MAIL_CLUSTER_SSH_KNOWN_HOSTS and checks for
#    completeness before Pulumi runs;
#  - the config push (pulumi-command remote connections): it reads the key from the stack
#    config as the secret mail-cluster:ssh_private_key, so it never lands in the state in clear.
#    The pushes pin each host's key from the stack (host_key), not from known_hosts.
# MAIL_CLUSTER_SSH_CONFIG (a repository variable, optional): ~/.ssh/config for the libvirt
# providers, e.g. `Host hv*.example.com` + `ProxyJump bastion` (README, "Through a bastion").
# The key only lives in the agent and in the runner's checkout of Pulumi.<stack>.yaml, encrypted.
# Env: MAIL_CLUSTER_SSH_KEY, MAIL_CLUSTER_SSH_KNOWN_HOSTS, MAIL_CLUSTER_SSH_CONFIG, STACK,
# PULUMI_ACCESS_TOKEN, GITHUB_ENV.
set -euo pipefail
: "${MAIL_CLUSTER_SSH_KEY:?secret MAIL_CLUSTER_SSH_KEY is not set}"
: "${MAIL_CLUSTER_SSH_KNOWN_HOSTS:?secret MAIL_CLUSTER_SSH_KNOWN_HOSTS is not set}"
: "${STACK:?}"
cd "$(dirname "$0")/../.."

install -d -m 700 ~/.ssh
printf '%s\n' "$MAIL_CLUSTER_SSH_KNOWN_HOSTS" >~/.ssh/known_hosts
chmod 600 ~/.ssh/known_hosts
if [ -n "${MAIL_CLUSTER_SSH_CONFIG:-}" ]; then
  printf '%s\n' "$MAIL_CLUSTER_SSH_CONFIG" >~/.ssh/config
  chmod 600 ~/.ssh/config
fi
# Every hypervisor and the bastion must be pinned: the libvirt provider would fail later, less clearly.
.venv/bin/python .github/workflows/check_known_hosts.py "$STACK" ~/.ssh/known_hosts

eval "$(ssh-agent -s)" >/dev/null
printf '%s\n' "$MAIL_CLUSTER_SSH_KEY" | ssh-add -q -
# Later steps of the job reach the same agent (and the last one stops it: the runner stays).
{
  echo "SSH_AUTH_SOCK=$SSH_AUTH_SOCK"
  echo "SSH_AGENT_PID=$SSH_AGENT_PID"
} >>"$GITHUB_ENV"

printf '%s\n' "$MAIL_CLUSTER_SSH_KEY" | pulumi config set --secret --stack "$STACK" mail-cluster:ssh_private_key
