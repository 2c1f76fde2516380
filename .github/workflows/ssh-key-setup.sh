#!/usr/bin/env bash
# Hands the operator SSH key (a repository secret) to the two things that use it on a runner:
#  - the libvirt providers (qemu+ssh://...): they authenticate through ssh-agent and check
#    ~/.ssh/known_hosts, like the ssh client;
#  - the config push (pulumi-command remote connections): it reads the key from the stack
#    config as the secret mail-cluster:ssh_private_key, so it never lands in the state in clear.
# The key only lives in the agent and in the runner's checkout of Pulumi.<stack>.yaml, encrypted.
# Env: MAIL_CLUSTER_SSH_KEY, MAIL_CLUSTER_SSH_KNOWN_HOSTS, STACK, PULUMI_ACCESS_TOKEN, GITHUB_ENV.
set -euo pipefail
: "${MAIL_CLUSTER_SSH_KEY:?repository secret MAIL_CLUSTER_SSH_KEY is not set}"
: "${MAIL_CLUSTER_SSH_KNOWN_HOSTS:?repository secret MAIL_CLUSTER_SSH_KNOWN_HOSTS is not set}"
: "${STACK:?}"

install -d -m 700 ~/.ssh
printf '%s\n' "$MAIL_CLUSTER_SSH_KNOWN_HOSTS" >~/.ssh/known_hosts
chmod 600 ~/.ssh/known_hosts

eval "$(ssh-agent -s)" >/dev/null
printf '%s\n' "$MAIL_CLUSTER_SSH_KEY" | ssh-add -q -
# Later steps of the job reach the same agent.
{
  echo "SSH_AUTH_SOCK=$SSH_AUTH_SOCK"
  echo "SSH_AGENT_PID=$SSH_AGENT_PID"
} >>"$GITHUB_ENV"

printf '%s\n' "$MAIL_CLUSTER_SSH_KEY" | pulumi config set --secret --stack "$STACK" mail-cluster:ssh_private_key
