#!/usr/bin/env python3
"""Install a host's rendered tree safely. Runs ON the host (Python 3 stdlib only).

    python3 push_host.py [--root DIR] [--no-reload] [--no-probes] < manifest.json

0. wait for cloud-init to finish (failing if it reports an error), then install the role's
   Debian packages that are missing (apt-get, noninteractive);
1. stage every file in a private directory;
2. in a private mount namespace, lay the staged files over the live ones and run each daemon's
   own checker (postfix check, doveconf, nginx -t, ...) -- the running services see nothing;
3. only if every check passes: keep the files it replaces (STATE_DIR/previous), install the
   changed files atomically (mode, owner), postmap the changed lookup tables, remove the files an
   earlier push installed that the tree no longer has, and reload exactly the services whose files
   changed -- plus those whose reload failed in an earlier push (the state file lists them);
4. after the reloads, run the tree's probes (an SMTP session to an accepted RCPT, an IMAPS
   greeting ...), each bounded in time. A probe that fails puts the previous files back, reloads
   the same services again, probes again, and the push fails naming the host, the probe and its
   output.
A failed check changes nothing on disk and exits 1 with the checker's message.
The manifest is HostTree.manifest() (render/tree.py); it arrives on stdin so that its secrets
never appear in a command line, the Pulumi state or a log.

STATE_DIR/push-state.json remembers what the program installed ({path: {reload, postmap}}: only
those files are ever removed), which reloads are still owed, and what the last push replaced.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Postfix tools pause while main.cf looks "hot" (modified in the last second or two: maybe still
# being edited) before they trust it. Every file here appears complete, by an atomic rename, so its
# mtime is set that far back: postmap and `postfix check` right after a write do not sleep ~2 s.
SETTLED_SECONDS = 2
# mount(2) flags: a recursive bind mount (the live subdirectories of a mirrored directory).
MS_BIND, MS_REC = 0x1000, 0x4000
# Under --root: what the push remembers between runs, and the files the last push replaced.
STATE_DIR = "var/lib/mail-cluster"
STATE_FILE = f"{STATE_DIR}/push-state.json"
PREVIOUS_DIR = f"{STATE_DIR}/previous"
# A probe tries again until it passes or this many seconds have gone by (a reloaded daemon takes a
# moment: Postfix's master re-execs, NGINX starts new workers, rspamd reloads its maps), waiting 2,
# 4, 8 ... s between tries: smtpd counts a probe's connections against the case study's 10 a
# minute per client, and the probes after a roll-back need some of those too.
PROBE_WITHIN = 20
# A reload command only signals the daemon (`postfix reload` sends the master a SIGHUP and returns):
# until the daemon has acted on it, an idle process with the old configuration can still take the
# next connection, and a probe sent at once could pass on the files it should be judging.
RELOAD_SETTLE = 1.0
PROBE_FIRST_WAIT = 2
PROBE_ATTEMPT_TIMEOUT = 10
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}


class CheckFailed(Exception):
    pass


class PushFailed(Exception):
    """The push did not keep its promise; the message names the host and what failed."""


def _ids(spec: dict) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(spec["owner"]).pw_uid
    except KeyError:
        uid = 0
    try:
        gid = grp.getgrnam(spec["group"]).gr_gid
    except KeyError:
        gid = 0
    return uid, gid


def _write(path: Path, spec: dict) -> None:
    """Atomic write with mode and owner set before the file appears under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(spec["content"])
        os.chmod(tmp, spec["mode"])
        os.chown(tmp, *_ids(spec))
        settled = time.time() - SETTLED_SECONDS
        os.utime(tmp, (settled, settled))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _changed(root: Path, manifest: dict) -> list[str]:
    changed = []
    for path, spec in manifest["files"].items():
        target = root / path.lstrip("/")
        try:
            st = target.stat()
            same = (
                target.read_text() == spec["content"]
                and (st.st_mode & 0o7777) == spec["mode"]
                and (st.st_uid, st.st_gid) == _ids(spec)
            )
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            changed.append(path)
    return changed


def _mirror_dirs(paths: list[str]) -> dict[Path, list[str]]:
    """Existing directory -> the staged files that land in it: each file's parent or, for a file
    in a directory still to be created, its deepest existing ancestor."""
    dirs: dict[Path, list[str]] = {}
    for p in paths:
        d = Path(p).parent
        while not d.is_dir():
            d = d.parent
        dirs.setdefault(d, []).append(p)
    return dirs


def _bind(source: str | Path, target: Path) -> None:
    # The syscall itself: a mirrored /etc binds a hundred subdirectories, a `mount` process each is slow.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} on {target}: {os.strerror(err)}")


def _mirror(live: Path, copy: Path) -> None:
    """A private copy of one directory level, bind-mounted over the live one: its files copied
    (owner, mode, mtime), its subdirectories and other nodes the live ones (bind mounts), so the
    staged files and whatever the checks write there (postmap's .db) never reach the live dir."""
    st = live.stat()
    copy.mkdir()
    # Owner first: a chown clears set-id bits the mode then restores.
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, st.st_mode & 0o7777)
    with os.scandir(live) as entries:
        for entry in entries:
            target = copy / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                target.mkdir()
                _bind(entry.path, target)
            elif entry.is_file():
                shutil.copyfile(entry.path, target)
                est = entry.stat()
                os.chown(target, est.st_uid, est.st_gid)
                shutil.copystat(entry.path, target)
            else:
                target.touch()
                _bind(entry.path, target)


def _overlay_and_check(manifest: dict, scratch: Path) -> None:
    """Inside a private mount namespace: give each directory that receives staged files a private
    copy of its own level with the staged files in it (shallowest first, so a deeper one mirrors
    what the outer mirror shows), postmap the tables, then run the checks."""
    dirs = _mirror_dirs(list(manifest["files"]))
    for n, live in enumerate(sorted(dirs, key=lambda d: len(d.parts))):
        copy = scratch / f"dir{n}"
        _mirror(live, copy)
        for path in dirs[live]:
            _write(copy / Path(path).relative_to(live), manifest["files"][path])
        _bind(copy, live)
    for path, spec in manifest["files"].items():
        if spec["postmap"]:
            _run(["postmap", path], f"postmap {path}")
    for check in manifest["checks"]:
        _run(check["argv"], check["name"])


def _run(argv: list[str], name: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    output = "\n".join(dict.fromkeys((result.stdout + result.stderr).strip().splitlines()))
    # Postfix and doveconf report many problems as warnings and still exit 0: a warning is a failure here.
    if result.returncode != 0 or "warning:" in output.lower():
        raise CheckFailed(f"check {name!r} failed ({' '.join(argv)}):\n{output}")


def check(manifest: dict) -> None:
    """Run every check of the manifest against its files, without touching the live system."""
    with tempfile.TemporaryDirectory(prefix="mail-push-") as scratch:
        Path(scratch, "manifest.json").write_text(json.dumps(manifest))
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, "--inside", scratch],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CheckFailed(result.stderr.strip() or result.stdout.strip())


def _target(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


# ---- what the program installed, what it still owes -----------------------------------------


def load_state(root: Path) -> dict:
    """{"installed": {path: {"reload": [...], "postmap": bool}}, "pending": [service, ...],
    "previous": {"installed": ..., "files": {path: existed}}} -- empty on a host never pushed to."""
    try:
        state = json.loads(_target(root, STATE_FILE).read_text())
    except FileNotFoundError:
        state = {}
    return {"installed": {}, "pending": [], "previous": None, **state}


def save_state(root: Path, state: dict) -> None:
    _write(_target(root, STATE_FILE), {"content": json.dumps(state, indent=1, sort_keys=True) + "\n", "mode": 0o600})


def _meta(spec: dict) -> dict:
    return {"reload": list(spec["reload"]), "postmap": bool(spec["postmap"])}


def _keep_previous(root: Path, paths: list[str]) -> dict[str, bool]:
    """Copy what `paths` hold now to PREVIOUS_DIR (mode, owner, mtime kept), replacing what an
    earlier push kept there; path -> whether it existed."""
    previous = _target(root, PREVIOUS_DIR)
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir(parents=True, mode=0o700)
    existed = {}
    for path in paths:
        live = _target(root, path)
        existed[path] = live.is_file()
        if existed[path]:
            copy = previous / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(live, copy)
            st = live.stat()
            os.chown(copy, st.st_uid, st.st_gid)
    return existed


def _postmap(root: Path, path: str) -> None:
    # postmap reads main.cf (under the root) for its defaults.
    subprocess.run(["postmap", "-c", str(root / "etc/postfix"), str(_target(root, path))], check=True)


def _remove(root: Path, path: str, meta: dict) -> None:
    _target(root, path).unlink(missing_ok=True)
    if meta.get("postmap"):
        _target(root, path + ".db").unlink(missing_ok=True)


def install(manifest: dict, root: Path, state: dict) -> dict:
    """Check, then install what changed and remove what the program installed that the tree no
    longer has; keeps the replaced files for the roll-back. Returns {"changed", "removed", "reload"}
    (reload: the services of the changed and removed files, plus the reloads still owed)."""
    changed = _changed(root, manifest)
    installed = state["installed"]
    removed = sorted(p for p in installed if p not in manifest["files"])
    if changed or removed:
        check(manifest)
        state["previous"] = {"installed": dict(installed), "files": _keep_previous(root, changed + removed)}
        owed = {s for p in changed for s in manifest["files"][p]["reload"]}
        owed |= {s for p in removed for s in installed[p]["reload"]}
        # Owed before anything changes: should the push die half-way, the next one reloads.
        state["pending"] = sorted(set(state["pending"]) | owed)
        save_state(root, state)
        for path in changed:
            _write(_target(root, path), manifest["files"][path])
        for path in changed:
            if manifest["files"][path]["postmap"]:
                _postmap(root, path)
        for path in removed:
            _remove(root, path, installed[path])
    state["installed"] = {p: _meta(spec) for p, spec in manifest["files"].items()}
    save_state(root, state)
    return {"changed": changed, "removed": removed, "reload": sorted(state["pending"])}


def restore_previous(root: Path, state: dict) -> list[str]:
    """Put back what the last install replaced or removed, and take away what it created; returns
    the services to reload (those of every file it touched)."""
    previous = state["previous"]
    kept = _target(root, PREVIOUS_DIR)
    old, new = previous["installed"], state["installed"]
    for path, existed in previous["files"].items():
        live = _target(root, path)
        if existed:
            copy = kept / path.lstrip("/")
            live.parent.mkdir(parents=True, exist_ok=True)
            tmp = live.with_name(f".{live.name}.restore")
            shutil.copy2(copy, tmp)
            st = copy.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
            os.replace(tmp, live)
            if old.get(path, {}).get("postmap") or new.get(path, {}).get("postmap"):
                _postmap(root, path)
        else:
            _remove(root, path, new.get(path, {}))
    services = {s for p in previous["files"] for meta in (old.get(p), new.get(p)) if meta for s in meta["reload"]}
    state["installed"] = old
    state["pending"] = sorted(set(state["pending"]) | services)
    state["previous"] = None
    save_state(root, state)
    return sorted(state["pending"])


def reload(manifest: dict, root: Path, state: dict) -> list[str]:
    """Run the owed reloads in name order; each one that succeeds is no longer owed. Returns the
    failures, each naming the service and the command's words."""
    failures = []
    for service in sorted(state["pending"]):
        command = manifest["services"].get(service)
        if command is not None:
            result = subprocess.run(command, shell=True, capture_output=True, text=True)
            if result.returncode != 0:
                words = (result.stdout + result.stderr).strip()
                failures.append(f"reload {service!r} failed ({command}):\n{words}")
                continue
        # A service the tree no longer has owes nothing.
        state["pending"] = [s for s in state["pending"] if s != service]
        save_state(root, state)
    return failures


# ---- probes: does the host still do its job? ---------------------------------------------------


class ProbeFailed(Exception):
    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        # An SMTP 5xx: the server has made up its mind, asking again changes nothing.
        self.permanent = permanent


def _tls(sock: socket.socket, name: str) -> ssl.SSLSocket:
    return ssl.create_default_context().wrap_socket(sock, server_hostname=name)


def _proxy_header(sock: socket.socket) -> bytes:
    """A PROXY protocol v1 header naming this connection's own ends, for a listener that takes
    its clients from the frontends (NGINX's proxy_protocol) and wants one before anything else."""
    family = "TCP6" if sock.family == socket.AF_INET6 else "TCP4"
    source, destination = sock.getsockname(), sock.getpeername()
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def _connect(probe: dict, timeout: float) -> socket.socket:
    sock = socket.create_connection((probe["address"], probe["port"]), timeout=timeout)
    if probe.get("proxy_protocol"):
        sock.sendall(_proxy_header(sock))
    return sock


def _smtplib():
    """smtplib, imported by the probes that use it only: with the email package it pulls in, ~25 ms
    of each push's start (and of its staged checks'), when most pushes run no SMTP probe."""
    import smtplib

    return smtplib


def _smtp(probe: dict, timeout: float):
    """smtplib's client, opening with a PROXY header when the probe says the listener wants one."""

    class _SMTP(_smtplib().SMTP):
        def _get_socket(self, host, port, timeout):
            sock = super()._get_socket(host, port, timeout)
            if probe.get("proxy_protocol", False):
                sock.sendall(_proxy_header(sock))
            return sock

    return _SMTP(probe["address"], probe["port"], local_hostname=probe["helo"], timeout=timeout)


def _first_line(probe: dict, timeout: float) -> str:
    sock = _connect(probe, timeout)
    with sock:
        conn = _tls(sock, probe["tls_name"]) if probe.get("tls_name") else sock
        with conn:
            data = b""
            while b"\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
    return data.decode(errors="replace").splitlines()[0] if data else ""


def probe_banner(probe: dict, timeout: float) -> str:
    """A connection (TLS from the first byte with tls_name) whose first line starts with `expect`."""
    line = _first_line(probe, timeout)
    if not line.startswith(probe["expect"]):
        raise ProbeFailed(f"[{probe['address']}]:{probe['port']} greeted {line!r}, not {probe['expect']!r}...")
    return line


def probe_tcp(probe: dict, timeout: float) -> str:
    socket.create_connection((probe["address"], probe["port"]), timeout=timeout).close()
    return f"[{probe['address']}]:{probe['port']} accepts connections"


def probe_smtp(probe: dict, timeout: float) -> str:
    """EHLO; STARTTLS (certificate checked against tls_name) and EHLO again; AUTH offered when
    asked; MAIL FROM and RCPT TO each `rcpt` when given, then RSET: nothing is sent."""
    with _smtp(probe, timeout) as client:
        client.ehlo()
        if probe.get("tls_name"):
            client._host = probe["tls_name"]  # the name starttls() checks the certificate against
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if probe.get("auth") and not client.has_extn("auth"):
            raise ProbeFailed("no AUTH offered after STARTTLS")
        answers = []
        if probe.get("rcpt"):
            code, text = client.mail(probe.get("mail_from", ""))
            if code != 250:
                raise ProbeFailed(f"MAIL FROM:<{probe.get('mail_from', '')}>: {code} {text.decode()}", code >= 500)
            for rcpt in probe["rcpt"]:
                code, text = client.rcpt(rcpt)
                if code not in (250, 251):
                    raise ProbeFailed(f"RCPT TO:<{rcpt}>: {code} {text.decode()}", code >= 500)
                answers.append(f"RCPT TO:<{rcpt}>: {code}")
            client.rset()
    return "; ".join(answers) or "EHLO answered"


def _lmtp_target(probe: dict) -> str:
    """Where Postfix hands mail over LMTP (`postconf -h <parameter>`): a unix socket path under its
    queue directory, or host:port. Asked of Postfix, so a transport that points elsewhere is seen."""

    def postconf(name: str) -> str:
        return subprocess.run(["postconf", "-h", name], capture_output=True, text=True, check=True).stdout.strip()

    value = postconf(probe["postconf"])
    kind, _, where = value.partition(":")
    if kind != "lmtp":
        raise ProbeFailed(f"{probe['postconf']} = {value}: not an LMTP transport")
    if where.startswith("unix:"):
        path = where.removeprefix("unix:")
        return path if path.startswith("/") else f"{postconf('queue_directory')}/{path}"
    return where.removeprefix("inet:")


def probe_lmtp(probe: dict, timeout: float) -> str:
    target = _lmtp_target(probe)
    try:
        if target.startswith("/"):
            client = _smtplib().LMTP(target, timeout=timeout)
        else:
            host, _, port = target.rpartition(":")
            client = _smtplib().LMTP(host.strip("[]"), int(port), timeout=timeout)
    except OSError as err:
        raise ProbeFailed(f"LHLO at {target} ({probe['postconf']}): {err.strerror or err}") from None
    with client:
        code, text = client.docmd("LHLO", probe["helo"])
        if code != 250:
            raise ProbeFailed(f"LHLO at {target}: {code} {text.decode()}")
    return f"LHLO at {target}: 250"


def probe_http(probe: dict, timeout: float) -> str:
    """GET `path` (with TLS when tls_name); the status must be below `status_below`, and the body
    start with `body` when given."""
    sock = socket.create_connection((probe["address"], probe["port"]), timeout=timeout)
    with sock:
        conn = _tls(sock, probe["tls_name"]) if probe.get("tls_name") else sock
        with conn:
            host = probe.get("tls_name") or "localhost"
            conn.sendall(f"GET {probe['path']} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status_line = head.splitlines()[0] if head else ""
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) >= probe.get("status_below", 400):
        raise ProbeFailed(f"GET {probe['path']}: {status_line or 'no answer'}")
    if probe.get("body") and not body.startswith(probe["body"]):
        raise ProbeFailed(f"GET {probe['path']}: {status_line}, body {body[:80]!r}")
    return status_line


def _milter_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(command + data)) + command + data


def probe_milter(probe: dict, timeout: float) -> str:
    """The milter's answer to option negotiation, as Postfix opens each session with it (milter
    protocol version 6): a milter that takes the connection but does not speak fails."""
    where = f"[{probe['address']}]:{probe['port']}"
    with socket.create_connection((probe["address"], probe["port"]), timeout=timeout) as sock:
        data = b""
        try:
            sock.sendall(_milter_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ProbeFailed(f"{where} closed the milter session ({data!r})")
                data += chunk
            sock.sendall(_milter_packet(b"Q"))
        except OSError as err:
            raise ProbeFailed(f"{where} broke off the milter session: {err.strerror or err}") from None
    if data[4:5] != b"O" or len(data) < 17:
        raise ProbeFailed(f"{where} answered option negotiation with {data[4:40]!r}")
    return f"milter protocol version {struct.unpack('>I', data[5:9])[0]}"


def _dns_query(name: str, qtype: int, ident: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return (
        ident.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + labels
        + b"\x00"
        + (qtype.to_bytes(2, "big") + b"\x00\x01")
    )


def probe_dns(probe: dict, timeout: float) -> str:
    """A recursive query to the host's resolver; NOERROR or NXDOMAIN is an answer, SERVFAIL is not."""
    ident = int.from_bytes(os.urandom(2), "big")
    family = socket.AF_INET6 if ":" in probe["server"] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(_dns_query(probe["query"], probe.get("qtype", 1), ident), (probe["server"], 53))
        reply = sock.recv(4096)
    rcode = reply[3] & 0x0F if len(reply) >= 4 and int.from_bytes(reply[:2], "big") == ident else None
    names = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    if rcode not in (0, 3):
        raise ProbeFailed(f"{probe['query']} at {probe['server']}: {names.get(rcode, rcode)}")
    return f"{probe['query']}: {names[rcode]}"


def probe_argv(probe: dict, timeout: float) -> str:
    result = subprocess.run(probe["argv"], capture_output=True, text=True, timeout=timeout)
    words = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise ProbeFailed(f"{' '.join(probe['argv'])} exited {result.returncode}: {words}")
    return words


PROBES = {
    "banner": probe_banner,
    "tcp": probe_tcp,
    "smtp": probe_smtp,
    "lmtp": probe_lmtp,
    "http": probe_http,
    "dns": probe_dns,
    "milter": probe_milter,
    "argv": probe_argv,
}


def run_probe(probe: dict) -> tuple[bool, str]:
    """(passed, what it saw): tried again until it passes or `within` seconds have gone by."""
    deadline = time.monotonic() + probe.get("within", PROBE_WITHIN)
    timeout = probe.get("timeout", PROBE_ATTEMPT_TIMEOUT)
    wait = PROBE_FIRST_WAIT
    while True:
        try:
            return True, PROBES[probe["kind"]](probe, timeout)
        except Exception as err:  # whatever goes wrong, the probe did not pass: roll back, say why
            seen = f"{type(err).__name__}: {err}" if not isinstance(err, ProbeFailed) else str(err)
            if getattr(err, "permanent", False):
                return False, seen
        if time.monotonic() + wait > deadline:
            return False, seen
        time.sleep(wait)
        wait *= 2


def probe(manifest: dict) -> tuple[list[str], str | None]:
    """(names of the probes that passed, the first failure as "name: output"), in manifest order."""
    passed = []
    for p in manifest.get("probes", []):
        ok, seen = run_probe(p)
        if not ok:
            return passed, f"probe {p['name']!r} failed: {seen}"
        passed.append(p["name"])
    return passed, None


# ---- before anything: the VM is ready and has its packages -----------------------------------


def wait_for_cloud_init() -> None:
    """A new VM answers SSH before cloud-init has installed its packages: wait for it. Its errors
    fail the push (status 1); status 2 (cloud-init 23.4+: recoverable errors, e.g. a deprecated
    key) is reported and the push goes on."""
    if not shutil.which("cloud-init"):
        return
    result = subprocess.run(["cloud-init", "status", "--wait", "--long"], capture_output=True, text=True)
    words = (result.stdout + result.stderr).strip()
    if result.returncode == 2:
        print(f"cloud-init reports recoverable errors:\n{words}", file=sys.stderr)
    elif result.returncode != 0:
        raise PushFailed(f"cloud-init failed (status {result.returncode}):\n{words}")


def missing_packages(packages: list[str]) -> list[str]:
    # One dpkg-query for them all (each reads dpkg's whole status file: ~10 ms of CPU a call). It
    # names a multi-arch package with its architecture (libc6:amd64); it exits 1 when one is
    # unknown, and says so on stderr only.
    if not packages:
        return []
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${binary:Package} ${Status}\n", *packages], capture_output=True, text=True
    )
    installed = set()
    for line in result.stdout.splitlines():
        name, _, status = line.partition(" ")
        if status.endswith(" installed"):
            installed |= {name, name.split(":")[0]}
    return [p for p in packages if p not in installed]


def ensure_packages(packages: list[str]) -> list[str]:
    """Install the role's packages that are missing (apt-get, noninteractive, after an update
    should the first try fail); returns what it installed. Fails naming the packages and apt's words."""
    missing = missing_packages(packages)
    if not missing:
        return []
    env = {**os.environ, **APT_ENV}
    install_cmd = ["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confold", "install", *missing]
    result = subprocess.run(install_cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "-q", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(install_cmd, capture_output=True, text=True, env=env)
    still = missing_packages(missing) if result.returncode == 0 else missing
    if still:
        words = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise PushFailed(f"packages {' '.join(still)} not installed: apt-get said:\n{words}")
    return missing


# ---- the push ----------------------------------------------------------------------------------


def push(manifest: dict, root: Path, *, reloads: bool = True, probes: bool = True) -> dict:
    """Everything after the packages: install, reload, probe, and roll back on a failed probe.
    Returns the result; raises PushFailed (the result in its second argument) when the host is
    left owing a reload or rolled back."""
    state = load_state(root)
    result = install(manifest, root, state)
    result["probes"] = []
    if not reloads:
        # The caller was handed the list and reloads itself: nothing stays owed.
        state["pending"] = []
        save_state(root, state)
        return result
    installed_now = bool(result["changed"] or result["removed"])
    failures = reload(manifest, root, state)
    if failures:
        raise PushFailed("\n".join(failures) + "\n(owed: the next push reloads again)", result)
    if not (probes and (installed_now or result["reload"])):
        return result
    time.sleep(RELOAD_SETTLE)
    result["probes"], failure = probe(manifest)
    if failure is None:
        return result
    if not installed_now:
        raise PushFailed(failure, result)
    restore_previous(root, state)
    failures = reload(manifest, root, state)
    if not failures:
        time.sleep(RELOAD_SETTLE)
    _, again = probe(manifest) if not failures else ([], None)
    after = "; ".join(failures) or (f"still failing: {again}" if again else "probes pass again")
    result["rolled_back"] = True
    raise PushFailed(f"{failure}\nrolled back to the previous files, reloaded: {after}", result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory")
    parser.add_argument(
        "--no-reload",
        action="store_true",
        help="print the reload list and leave the reloads (and probes) to the caller",
    )
    parser.add_argument("--no-probes", action="store_true", help="reload, but run no probes")
    parser.add_argument("--check-only", action="store_true", help="run the checks, install nothing")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        try:
            _overlay_and_check(json.loads(Path(args.inside, "manifest.json").read_text()), Path(args.inside))
        except CheckFailed as err:
            print(err, file=sys.stderr)
            return 1
        return 0
    manifest = json.load(sys.stdin)
    host = manifest["host"]
    try:
        if args.check_only:
            check(manifest)
            print(json.dumps({"checked": len(manifest["checks"])}))
            return 0
        installed_packages = []
        # Packages belong to the system itself: not to a tree installed under another root.
        if args.root == Path("/"):
            wait_for_cloud_init()
            installed_packages = ensure_packages(manifest.get("packages", []))
        result = push(manifest, args.root, reloads=not args.no_reload, probes=not args.no_probes)
        if installed_packages:
            result["packages"] = installed_packages
    except CheckFailed as err:
        print(f"{host}: refused, nothing installed: {err}", file=sys.stderr)
        return 1
    except PushFailed as err:
        if len(err.args) > 1:
            print(json.dumps(err.args[1]))
        print(f"{host}: {err.args[0]}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
