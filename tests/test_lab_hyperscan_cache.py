"""The machine's cache of rspamd's compiled hyperscan files (lab.hyperscan.MachineCache): keyed by
the packages that made them, written atomically, and never a reason for `lab up` to fail. What
rspamd does with a cached file (loads it, or compiles again one that fails its checks) is
tests/test_lab_startup.py's, on the running lab."""

from __future__ import annotations

import os
import subprocess

import pytest

from lab import hyperscan
from lab.host_root import HostRoot


def _installed(package: str) -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def compiled(tmp_path):
    """A compile directory as rspamd leaves it: serialized files, their .unser copies, its state."""
    d = tmp_path / "compiled"
    d.mkdir()
    (d / "aa.hsmp").write_bytes(b"suffix list")
    (d / "bb.hsmc").write_bytes(b"regexp map")
    (d / "aa.hsmp.unser").write_bytes(b"mapped unchecked")
    (d / "bb.hsmc.unser").write_bytes(b"mapped unchecked")
    (d / "rspamd.sock").write_text("")
    return d


def test_the_cache_is_keyed_by_the_rspamd_and_hyperscan_packages(tmp_path):
    key = hyperscan.MachineCache(tmp_path).dir.name
    assert f"rspamd={_installed('rspamd')}" in key.split("+")
    if _installed("libhyperscan5"):
        assert f"libhyperscan5={_installed('libhyperscan5')}" in key.split("+")


def test_only_the_files_rspamd_checks_are_kept_and_seeded_back(tmp_path, compiled):
    cache = hyperscan.MachineCache(tmp_path / "machine", key="rspamd=1")
    assert cache.save(compiled) == 2
    assert sorted(f.name for f in cache.dir.iterdir()) == ["aa.hsmp", "bb.hsmc"]  # no .unser: mapped unchecked
    assert cache.save(compiled) == 0  # nothing new
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert cache.seed(fresh, os.getuid(), os.getgid()) == 2
    assert (fresh / "aa.hsmp").read_bytes() == b"suffix list"
    assert cache.error is None


def test_a_file_rspamd_compiled_again_replaces_the_cached_one(tmp_path, compiled):
    cache = hyperscan.MachineCache(tmp_path / "machine", key="rspamd=1")
    cache.save(compiled)
    (cache.dir / "aa.hsmp").write_bytes(b"suffix lisT")  # corrupt: rspamd rejects it and compiles
    assert cache.save(compiled) == 1
    assert (cache.dir / "aa.hsmp").read_bytes() == b"suffix list"
    assert not [f for f in cache.dir.iterdir() if f.name.startswith(".")]  # no temporary left


def test_an_upgrade_starts_a_new_directory_and_drops_the_old_one(tmp_path, compiled):
    old = hyperscan.MachineCache(tmp_path, key="rspamd=3.4-1")
    old.save(compiled)
    new = hyperscan.MachineCache(tmp_path, key="rspamd=3.4-2")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new.seed(empty, os.getuid(), os.getgid()) == 0  # nothing of 3.4-1's is used
    new.save(compiled)
    assert [d.name for d in tmp_path.iterdir() if d.name.startswith("rspamd=")] == ["rspamd=3.4-2"]


def test_files_no_lab_used_for_a_month_go(tmp_path, compiled):
    cache = hyperscan.MachineCache(tmp_path, key="rspamd=1")
    cache.save(compiled)
    stale = cache.dir / "cc.hsmp"
    stale.write_bytes(b"another stack's map")
    month_ago = stale.stat().st_mtime - (hyperscan.UNUSED_DAYS + 1) * 86400
    for f in cache.dir.iterdir():
        os.utime(f, (month_ago, month_ago))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert cache.seed(fresh, os.getuid(), os.getgid()) == 3
    # rspamd mapped aa and bb (their .unser copies), not cc.
    cache.save(compiled)
    assert sorted(f.name for f in cache.dir.iterdir()) == ["aa.hsmp", "bb.hsmc"]
    assert (tmp_path / "compiled").is_dir()  # beside the cache, not one of its versions: left alone


def test_an_unusable_cache_is_a_cold_one_never_an_error(tmp_path, compiled):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    cache = hyperscan.MachineCache(blocked, key="rspamd=1")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert cache.seed(fresh, os.getuid(), os.getgid()) == 0
    assert cache.save(compiled) == 0
    assert "not written" in cache.error
    assert list(fresh.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the compile directory is given to rspamd's user")
def test_a_cache_rspamd_does_not_start_from_is_dropped_and_compiled_from_nothing(tmp_path, compiled, monkeypatch):
    # rspamd compiles again any file that fails its checks (tests/test_lab_startup.py); should a
    # cached file still keep it from starting, `compile` starts over from an empty directory.
    machine = hyperscan.MachineCache(tmp_path / "machine", key="rspamd=1")
    machine.save(compiled)
    runs = []

    def run(root, cache, argv, done, deadline, cpu):
        runs.append(sorted(f.name for f in cache.iterdir()))
        cpu.append(0.0)
        if len(runs) == 1:
            return False  # not ready with the seeded files
        (cache / "aa.hsmp").write_bytes(b"suffix list, compiled again")
        (cache / "aa.hsmp.unser").write_bytes(b"mapped")
        return True

    monkeypatch.setattr(hyperscan, "_run", run)
    root = HostRoot("h", "ns", "h")
    result = hyperscan.compile(root, ["rspamd"], lambda pid: True, into=tmp_path / "into", machine=machine)
    assert runs == [["aa.hsmp", "bb.hsmc"], []]
    assert result.retried and result.dir == tmp_path / "into" and result.seeded == 2
    assert result.saved == 1 and (machine.dir / "aa.hsmp").read_bytes() == b"suffix list, compiled again"
