"""How the lab starts: rspamd's hyperscan multipatterns are compiled once for every rspamd host
(lab.hyperscan) and mapped from one copy, and each rspamd still runs the host's own rendered
config from its own /var/lib/rspamd."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lab import cluster, daemons, hyperscan, state
from lab import hosts as lab_hosts
from model import load_stack_file

pytestmark = pytest.mark.lab


def _rspamd_mains(lab: dict) -> dict[str, int]:
    # The lab's state now, not the fixture's snapshot: failover tests restart daemons (new pids).
    return {h["name"]: d["pid"] for h in cluster.status()["hosts"] for d in h["daemons"] if d["name"] == "rspamd"}


def _mapped_cache_files(pid: int) -> set[tuple[str, int]]:
    """(device, inode) of every hyperscan cache file the process maps."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".unser"):
            found.add((fields[3], int(fields[4])))
    return found


def test_every_rspamd_maps_the_one_compiled_copy_of_the_suffix_list(lab):
    mains = _rspamd_mains(lab)
    assert len(mains) == 6
    mapped = {host: _mapped_cache_files(pid) for host, pid in mains.items()}
    first = next(iter(mapped.values()))
    assert first, "rspamd maps no hyperscan database"
    # The multipatterns (the suffix list, the regexp maps) are the same inodes in every host.
    shared = set.intersection(*mapped.values())
    assert shared, mapped
    roots = cluster.host_roots()
    for host in mains:
        own = {f.stat().st_ino for f in hyperscan.shared_dir(roots[host]).glob("*.unser")}
        assert {inode for _, inode in shared} <= own


def test_each_rspamd_keeps_its_own_state_beside_the_shared_cache(lab):
    roots = cluster.host_roots()
    for host in _rspamd_mains(lab):
        state_dir = roots[host].outside(hyperscan.CACHE_DIR)
        # Its controller socket and statistics are the host's own files, not links to another host's.
        assert (state_dir / "rspamd.sock").exists()
        assert not (state_dir / "rspamd.sock").is_symlink()
        links = [p for p in state_dir.iterdir() if p.is_symlink()]
        assert links and all(str(p.readlink()).startswith(str(roots[host].base)) for p in links)


# ---- the machine's cache of the compiled files (lab.hyperscan.MachineCache) ---------------------

HOST = "smtp-out-chrma0"


def _hyperscan_runs(tmp_path):
    """compile(name, machine): the lab's compile run on HOST, its rspamd stopped meanwhile (the
    run listens where it does), into a fresh directory on the host's lab directory."""
    status = cluster.status()
    entry = next(h for h in status["hosts"] if h["name"] == HOST)
    root = cluster.host_roots()[HOST]
    ready = daemons.readiness(load_stack_file(status["stack"]), entry["role"], "rspamd")
    made = []

    def compile(name: str, machine: hyperscan.MachineCache) -> hyperscan.Compiled:
        into = root.base / f"hyperscan-test-{name}"
        shutil.rmtree(into, ignore_errors=True)
        made.append(into)
        return hyperscan.compile(
            root,
            daemons.command(daemons.DAEMONS["rspamd"]),
            lambda pid: not daemons.missing(entry["netns"], pid, ready),
            into=into,
            machine=machine,
        )

    return compile, made


@pytest.fixture
def hyperscan_runs(lab, tmp_path):
    compile, made = _hyperscan_runs(tmp_path)
    lab_hosts.stop(HOST, ["rspamd"])
    try:
        yield compile
    finally:
        lab_hosts.start(HOST, ["rspamd"])
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def _corrupt(f: Path, offset: int, data: bytes) -> None:
    raw = bytearray(f.read_bytes())
    raw[offset : offset + len(data)] = data
    f.write_bytes(bytes(raw))


def _flip(f: Path, offset: int) -> None:
    raw = bytearray(f.read_bytes())
    raw[offset] ^= 0xFF
    f.write_bytes(bytes(raw))


def test_a_warm_machine_cache_is_loaded_and_a_bad_file_in_it_compiled_again(hyperscan_runs, tmp_path):
    machine = hyperscan.MachineCache(tmp_path / "machine")
    cold = hyperscan_runs("cold", machine)
    assert cold.dir and not cold.seeded and cold.saved >= 3, cold
    kept = {f.name: f.read_bytes() for f in machine.dir.iterdir()}
    assert all(name.endswith((".hsmp", ".hsmc")) for name in kept)

    warm = hyperscan_runs("warm", machine)
    assert warm.dir and warm.seeded == len(kept) and warm.saved == 0 and not warm.retried, warm
    # Loaded, not compiled: the compile is most of the cold run's CPU.
    assert sum(warm.cpu) < sum(cold.cpu) / 2, (warm.cpu, cold.cpu)

    # Three files rspamd must not trust: a flipped byte in the bytecode (its CRC32C; the file's
    # last bytes are slack the CRC leaves out), another hyperscan version in the header, a
    # truncated one. The largest (the suffix list) is spared: compiling it again is the cold
    # run's cost.
    small = sorted(machine.dir.iterdir(), key=lambda f: f.stat().st_size)[:3]
    _flip(small[0], small[0].stat().st_size // 2)
    _corrupt(small[1], 4, b"\x00\x00\x00\x01")
    small[2].write_bytes(small[2].read_bytes()[: small[2].stat().st_size // 2])
    bad = hyperscan_runs("bad", machine)
    assert bad.dir and bad.seeded == len(kept) and not bad.retried, bad
    assert bad.saved == 3, bad  # compiled again by rspamd, written back
    assert all(f.stat().st_size for f in bad.dir.glob("*.unser")), "an rspamd would map nothing"
    # What rspamd loads back (what it writes after loading) is what it compiled the first time.
    assert {f.name: f.read_bytes() for f in machine.dir.iterdir()} == kept
    again = hyperscan_runs("again", machine)
    assert again.saved == 0 and not again.retried, again


def test_the_lab_started_from_the_machine_cache(lab):
    # The lab's own compile run loaded from it, or (a first `lab up` on this machine) filled it.
    done = state.load()["hyperscan"]
    assert not done["error"] and not done["retried"], done
    assert done["seeded"] or done["saved"], done
    cached = {f.name for f in hyperscan.MachineCache().dir.iterdir()}
    mapped = {f.name.removesuffix(".unser") for f in hyperscan.shared_dir(cluster.host_roots()[HOST]).glob("*.unser")}
    assert mapped and mapped <= cached
