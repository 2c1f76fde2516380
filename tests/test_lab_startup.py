"""How the lab starts: rspamd's hyperscan multipatterns are compiled once for every rspamd host
(lab.hyperscan) and mapped from one copy, and each rspamd still runs the host's own rendered
config from its own /var/lib/rspamd."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import cluster, hyperscan

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
