"""Session fixtures for tests that need a running Debian 12 guest (tests/vm_guest.py), registered
in conftest.py: the image, a throwaway operator key, the lab stack that names it, and the guests.

`vm_guest` is a running maildrop booted from the program's own seed, for tests over real SSH (e.g.
the push command the program gives remote.Command): `vm_guest.ssh_argv()` logs in as root with
`vm_guest.operator_key` and accepts only `vm_guest.host_key` (`vm_guest.known_hosts`, by host name),
on 127.0.0.1 port `vm_guest.port`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.vm_guest import Guest, image, unavailable

LOGS = Path(__file__).resolve().parent.parent / "artifacts" / "vm-logs"


@pytest.fixture(scope="session")
def vm_image():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    built = image()
    if built.build_seconds is not None:
        print(f"VM image built in {built.build_seconds:.0f} s: {built.root.parent}")
    return built


@pytest.fixture(scope="session")
def operator_key(tmp_path_factory) -> Path:
    """A throwaway operator key: the stack copy the guests get names its public half."""
    key = tmp_path_factory.mktemp("operator") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vm-boot-test", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def vm_stack(stacks, operator_key):
    """The lab stack (documentation addresses only) with the test's operator key."""
    public = operator_key.with_suffix(".pub").read_text().strip()
    return stacks["lab"].model_copy(update={"ssh_public_key": public})


@pytest.fixture(scope="session")
def vm_guests(vm_image, vm_stack, keys, operator_key, tmp_path_factory):
    """role -> its first host's Guest, booted on first use and left running; all stopped at the end."""
    guests: dict[str, Guest] = {}

    def guest(role: str) -> Guest:
        if role not in guests:
            host = getattr(vm_stack.hosts, role)[0]
            g = Guest(
                stack=vm_stack,
                role=role,
                host=host,
                host_key=keys["lab"].ssh_host_keys[host.name],
                operator_key=operator_key,
                image=vm_image,
                workdir=tmp_path_factory.mktemp(f"vm-{host.name}"),
            )
            g.prepare()
            guests[role] = g
            try:
                g.boot()
            finally:
                keep_logs(g)
        return guests[role]

    yield guest
    for g in guests.values():
        g.shutdown()
        keep_logs(g)


@pytest.fixture(scope="session")
def vm_guest(vm_guests) -> Guest:
    """A running maildrop guest for tests over real SSH (e.g. the program's push command):
    `ssh_argv()` logs in as root with the pinned host key; `port`, `operator_key`, `known_hosts`."""
    guest = vm_guests("maildrop")
    if not guest.running:  # left powered off by a failed test
        guest.boot()
    return guest


def keep_logs(guest: Guest) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    for log in guest.workdir.glob("console-*.log"):
        (LOGS / f"{guest.host.name}-{log.name}").write_bytes(log.read_bytes())
