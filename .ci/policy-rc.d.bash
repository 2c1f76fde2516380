# Sourced by .ci/install. block_service_starts puts a policy-rc.d in place that refuses every
# service start (exit 101: the lab starts the daemons itself, in namespaces, and a CI container has
# no init to start them with), and arranges for what the machine had there before, its own file or
# none, to come back when the shell exits, whatever the exit status: services installed later on
# this machine start as they did before the install.
# POLICY_RC_D: another path than Debian's (tests/test_ci_install.py uses a temporary one).
POLICY_RC_D=${POLICY_RC_D:-/usr/sbin/policy-rc.d}

block_service_starts() {
  _policy_rc_d_saved=$(mktemp -d)
  if [ -e "$POLICY_RC_D" ] || [ -L "$POLICY_RC_D" ]; then
    cp -a "$POLICY_RC_D" "$_policy_rc_d_saved/policy-rc.d"
  fi
  trap restore_service_starts EXIT
  # rm first: a symlink in its place is put back, not written through.
  rm -f "$POLICY_RC_D"
  printf '#!/bin/sh\nexit 101\n' > "$POLICY_RC_D"
  chmod 0755 "$POLICY_RC_D"
}

restore_service_starts() {
  rm -f "$POLICY_RC_D"
  if [ -e "$_policy_rc_d_saved/policy-rc.d" ] || [ -L "$_policy_rc_d_saved/policy-rc.d" ]; then
    cp -a "$_policy_rc_d_saved/policy-rc.d" "$POLICY_RC_D"
  fi
  rm -rf "$_policy_rc_d_saved"
}
