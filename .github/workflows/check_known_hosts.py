"""Does a known_hosts file pin every SSH endpoint the libvirt providers dial for this stack?

    python .github/workflows/check_known_hosts.py STACK KNOWN_HOSTS

The libvirt providers (terraform-provider-libvirt 0.8.1, libvirt/uri/ssh.go) check each
`qemu+ssh://` hop against ~/.ssh/known_hosts, and their ProxyJump hop (the stack's bastion) too;
a host missing there fails `pulumi preview` deep inside a provider. This names the missing ones
first. The pushes do not read known_hosts: they pin the keys the stack holds (`host_key`).
Exit 1 naming every endpoint without a line, 0 when all have one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from model import load_stack_file


def endpoints(stack_name: str) -> list[str]:
    """known_hosts patterns (`host`, or `[host]:port` off port 22) of the hypervisors and the bastion."""
    stack = load_stack_file(stack_name)
    found = []
    for site in stack.sites:
        uri = urlsplit(site.hypervisor)
        if uri.scheme == "qemu+ssh" and uri.hostname:
            found.append((uri.hostname, uri.port or 22))
    if stack.bastion is not None:
        found.append((str(stack.bastion.host), stack.bastion.port))
    return [host if port == 22 else f"[{host}]:{port}" for host, port in found]


def missing(stack_name: str, known_hosts: Path) -> list[str]:
    # ssh-keygen -F finds hashed lines too.
    return [
        pattern
        for pattern in endpoints(stack_name)
        if subprocess.run(["ssh-keygen", "-F", pattern, "-f", str(known_hosts)], capture_output=True).returncode != 0
    ]


def main(argv: list[str]) -> int:
    stack_name, known_hosts = argv
    absent = missing(stack_name, Path(known_hosts))
    for pattern in absent:
        print(f"known_hosts has no key for {pattern} (stack {stack_name})", file=sys.stderr)
    return 1 if absent else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
