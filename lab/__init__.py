"""The lab: the whole stack on one Linux machine, in network namespaces, running the real Debian
daemons on the files `render` produces.

    .venv/bin/python -m lab up          render the lab stack, build the network, start every daemon, wait until ready
    .venv/bin/python -m lab status      where each service listens, the test accounts (--json for tests)
    .venv/bin/python -m lab down        stop every process, remove every namespace, mount and file
    .venv/bin/python -m lab apply       push what an edit of the stack file changed, host by host, with probes

Modules: network (namespaces, veths, addresses, routes), internet (the clients, the remote MTA,
the lab's DNS server's addresses), dns_server (nsd serving the emitted zones), host_root (each
host's filesystem view: the rendered tree over a Debian root), daemons (start/stop/readiness),
syslog (the hosts' /dev/log), netns (entering namespaces from Python), state (what `down`
removes), cluster (up/down/status), units (the hosts' systemctl: real reloads during a push),
apply (a change rolled out as `pulumi up` would). README.md says why it is built this way.
"""

from __future__ import annotations

import os
from pathlib import Path

# Several labs may run side by side (MAIL_LAB_ID=2 ...): their namespaces are separate worlds, so
# the same addresses do not clash; only these names must differ.
LAB_ID = os.environ.get("MAIL_LAB_ID", "")
if LAB_ID and not LAB_ID.isalnum():
    raise SystemExit(f"MAIL_LAB_ID must be letters and digits, not {LAB_ID!r}")
# Everything the lab creates on the machine lives under this tmpfs (mounted by `up`, unmounted by
# `down`) or is named with this prefix: `down` finds its leftovers by these two facts alone.
STATE_DIR = Path(f"/run/mail-lab{LAB_ID}")
NETNS_PREFIX = f"mlab{LAB_ID}-"
