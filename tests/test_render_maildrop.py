"""The maildrops' Postfix and Dovecot configuration, as the daemons themselves read it (postconf,
postmap, doveconf, sievec), and the IMAPSieve spam/ham training run by Dovecot's own imap binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import assert_checks_pass, run_push

from model import Stack
from render import render_host, tls
from render.maildrop import (
    DOVECOT_CONF,
    RSPAMD_PASSWORD_FILE,
    SIEVE_DIR,
    UNIT_DROP_IN,
    USERS_FILE,
    VIRTUAL_MAILDROP,
    rspamd_controller_password,
)
from render.names import tls_key_path
from render.tree import FileSpec, HostTree


@pytest.fixture(scope="module")
def maildrops(stacks, keys) -> dict[str, dict[str, HostTree]]:
    """stack name -> maildrop name -> its tree."""
    return {
        name: {h.name: render_host(stack, "maildrop", h, keys[name]) for h in stack.hosts.maildrop}
        for name, stack in stacks.items()
    }


def stage(tree: HostTree, root: Path) -> Path:
    """The tree's files under root (readable by all: the tests run the daemons as nobody too)."""
    for path, spec in tree.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(spec.content)
        target.chmod(0o755 if spec.mode & 0o100 else 0o644)
    return root


@pytest.fixture(scope="module")
def staged(maildrops, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(stack name, maildrop name) -> a directory holding the tree, its tables built by postmap."""
    out = {}
    for name, trees in maildrops.items():
        for host, tree in trees.items():
            root = stage(tree, tmp_path_factory.mktemp(f"{name}-{host}"))
            subprocess.run(["postmap", "-c", root / "etc/postfix", root / VIRTUAL_MAILDROP.lstrip("/")], check=True)
            out[name, host] = root
    return out


def doveconf(root: Path, setting: str, *filters: str) -> str:
    argv = ["doveconf", "-c", root / DOVECOT_CONF.lstrip("/"), *(a for f in filters for a in ("-f", f)), "-h", setting]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def postconf(root: Path, *args: str) -> str:
    argv = ["postconf", "-c", root / "etc/postfix", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def maildrop_domain(stack: Stack) -> str:
    return stack.service_name("maildrop")


# ---- the daemons' own checkers ---------------------------------------------------------------


@pytest.mark.checkers
def test_every_maildrop_passes_postfix_doveconf_and_sievec(maildrops):
    for trees in maildrops.values():
        for tree in trees.values():
            assert_checks_pass(tree)


def test_every_sieve_script_has_a_sievec_check(maildrops):
    for trees in maildrops.values():
        for tree in trees.values():
            scripts = {p for p in tree.files if p.endswith(".sieve")}
            checked = {c.argv[-2] for c in tree.checks if c.argv[0] == "sievec"}
            assert scripts == checked
            assert {f"{SIEVE_DIR}/before.d", f"{SIEVE_DIR}/after.d"} <= {str(Path(p).parent) for p in scripts}


def dovecot_files(tree: HostTree) -> dict[str, FileSpec]:
    """The tree's /etc/dovecot only: all doveconf and sievec read, and quick to lay over the live dir."""
    return {p: spec for p, spec in tree.files.items() if p.startswith("/etc/dovecot/")}


@pytest.mark.checkers
def test_a_broken_sieve_script_is_refused_with_sievecs_message(maildrops, stack_name):
    tree = next(iter(maildrops[stack_name].values()))
    path = f"{SIEVE_DIR}/report-ham.sieve"
    broken = dovecot_files(tree)
    broken[path] = replace(tree.files[path], content='require ["vnd.dovecot.pipe"];\npipe :copy "x" [ "y" \n')
    only_sievec = tuple(c for c in tree.checks if c.name == f"sievec {path}")
    result = run_push(replace(tree, files=broken, checks=only_sievec), "--check-only")
    assert result.returncode == 1
    assert f"sievec {path}" in result.stderr
    assert "parse error" in result.stderr or "error:" in result.stderr


@pytest.mark.checkers
def test_a_broken_dovecot_unit_drop_in_is_refused_by_systemd_analyze(maildrops, stack_name):
    tree = next(iter(maildrops[stack_name].values()))
    good = tree.files[UNIT_DROP_IN]
    assert "ExecStartPost=-/usr/bin/timeout 60 /usr/bin/doveadm sync -A -d " in good.content
    broken = {UNIT_DROP_IN: replace(good, content=good.content.replace("ExecStartPost", "ExecStartPots"))}
    only_unit = tuple(c for c in tree.checks if c.name.startswith("systemd-analyze"))
    result = run_push(replace(tree, files=broken, checks=only_unit), "--check-only")
    assert result.returncode == 1
    assert "Unknown key" in result.stderr and "ExecStartPots" in result.stderr


@pytest.mark.checkers
def test_a_doveconf_warning_is_refused(maildrops, stack_name):
    """doveconf warns with a capital W and exits 0: the check must still fail."""
    tree = next(iter(maildrops[stack_name].values()))
    broken = dovecot_files(tree)
    spec = tree.files[DOVECOT_CONF]
    broken[DOVECOT_CONF] = replace(spec, content=spec.content + "ssl_protocols = !SSLv3\n")
    only_doveconf = tuple(c for c in tree.checks if c.name == "doveconf -n")
    result = run_push(replace(tree, files=broken, checks=only_doveconf), "--check-only")
    assert result.returncode == 1
    assert "ssl_protocols has been replaced by ssl_min_protocol" in result.stderr


def test_the_sieve_service_compiles_every_script_directory(maildrops):
    for trees in maildrops.values():
        for tree in trees.values():
            command = tree.services["sieve"]
            for d in (SIEVE_DIR, f"{SIEVE_DIR}/before.d", f"{SIEVE_DIR}/after.d"):
                assert f"sievec -c {DOVECOT_CONF} {d}" in command
            assert {s for spec in tree.files.values() for s in spec.reload} == set(tree.services)


# ---- Dovecot, as doveconf reads it -------------------------------------------------------------


@pytest.mark.checkers
def test_dovecot_stores_mail_in_mdbox_under_vmail(stacks, staged, stack_name):
    for host in stacks[stack_name].hosts.maildrop:
        root = staged[stack_name, host.name]
        assert doveconf(root, "mail_location") == "mdbox:~/mdbox"
        assert doveconf(root, "userdb/0/default_fields") == "uid=vmail gid=vmail home=/var/dovecot/users/%n"
        assert doveconf(root, "userdb/0/args") == f"username_format=%n {USERS_FILE}"
        assert doveconf(root, "passdb/0/args") == f"username_format=%n {USERS_FILE}"
        assert doveconf(root, "mail_plugins").split() == ["notify", "push_notification", "replication"]
        assert doveconf(root, "mail_plugins", "protocol=lmtp").split()[-1] == "sieve"
        assert doveconf(root, "mail_plugins", "protocol=imap").split()[-1] == "imap_sieve"


@pytest.mark.checkers
def test_dovecot_serves_imaps_only_with_tls_required(stacks, staged, stack_name):
    stack = stacks[stack_name]
    root = staged[stack_name, stack.maildrop_primary.name]
    assert doveconf(root, "service/imap-login/inet_listener/imap/port") == "0"
    assert doveconf(root, "service/imap-login/inet_listener/imaps/port") == str(stack.ports.imaps)
    assert doveconf(root, "service/imap-login/inet_listener/imaps/ssl") == "yes"
    assert doveconf(root, "ssl") == "required"
    assert doveconf(root, "disable_plaintext_auth") == "yes"
    assert doveconf(root, "auth_mechanisms") == "plain login"
    assert doveconf(root, "mail_max_userip_connections", "protocol=imap") == "50"
    assert doveconf(root, "service/managesieve-login/inet_listener/sieve/port") == str(stack.ports.managesieve)
    assert doveconf(root, "service/managesieve/process_limit") == "256"


@pytest.mark.checkers
def test_dovecot_takes_lmtp_from_postfix_in_its_private_dir(stacks, staged, stack_name):
    root = staged[stack_name, stacks[stack_name].maildrop_primary.name]
    config = subprocess.run(
        ["doveconf", "-n", "-c", root / DOVECOT_CONF.lstrip("/")], capture_output=True, text=True, check=True
    ).stdout
    listener = config[config.index("unix_listener /var/spool/postfix/private/dovecot-lmtp {") :]
    listener = listener[: listener.index("}")]
    assert "group = postfix" in listener and "user = postfix" in listener and "mode = 0660" in listener
    assert postconf(root, "-h", "virtual_transport") == "lmtp:unix:private/dovecot-lmtp"


@pytest.mark.checkers
def test_each_maildrop_replicates_to_the_other(stacks, staged, stack_name):
    stack = stacks[stack_name]
    primary, backup = stack.maildrop_primary, stack.maildrop_backup
    port = stack.ports.doveadm
    for host, peer in ((primary, backup), (backup, primary)):
        root = staged[stack_name, host.name]
        assert doveconf(root, "plugin/mail_replica") == f"tcp:{stack.fqdn(peer)}:{port}"
        assert doveconf(root, "doveadm_port") == str(port)
        assert doveconf(root, "service/doveadm/inet_listener/0/port") == str(port)
        assert doveconf(root, "service/doveadm/vsz_limit") == "512 M"
        assert doveconf(root, "replication_max_conns") == "10"
        assert doveconf(root, "replication_full_sync_interval") == "1 hours"
        assert doveconf(root, "service/replicator/process_min_avail") == "1"
    # Both ends share one password: the peer's replicator logs in with its own.
    passwords = {doveconf(staged[stack_name, h.name], "doveadm_password") for h in (primary, backup)}
    assert len(passwords) == 1 and "" not in passwords


@pytest.mark.checkers
def test_sieve_settings_are_the_case_studys(stacks, staged, stack_name):
    root = staged[stack_name, stacks[stack_name].maildrop_primary.name]
    expected = {
        "sieve": "~/.dovecot.sieve",
        "sieve_global_path": f"{SIEVE_DIR}/default.sieve",
        "sieve_dir": "~/sieve",
        "sieve_global_dir": f"{SIEVE_DIR}/",
        "sieve_extensions": "+editheader",
        "sieve_before": f"{SIEVE_DIR}/before.d",
        "sieve_after": f"{SIEVE_DIR}/after.d",
        "sieve_plugins": "sieve_imapsieve sieve_extprograms",
        "imapsieve_mailbox1_name": "Junk",
        "imapsieve_mailbox1_causes": "COPY",
        "imapsieve_mailbox1_before": f"file:{SIEVE_DIR}/report-spam.sieve",
        "imapsieve_mailbox2_name": "*",
        "imapsieve_mailbox2_from": "Junk",
        "imapsieve_mailbox2_causes": "COPY",
        "imapsieve_mailbox2_before": f"file:{SIEVE_DIR}/report-ham.sieve",
        "sieve_pipe_bin_dir": SIEVE_DIR,
        "sieve_global_extensions": "+vnd.dovecot.pipe",
    }
    assert {k: doveconf(root, f"plugin/{k}") for k in expected} == expected
    assert doveconf(root, "protocols").split() == ["lmtp", "imap", "sieve"]


@pytest.mark.checkers
def test_every_sieve_script_compiles_with_sievec(maildrops, staged, stack_name, tmp_path):
    host, tree = next(iter(maildrops[stack_name].items()))
    root = staged[stack_name, host]
    for path in (p for p in tree.files if p.endswith(".sieve")):
        result = subprocess.run(
            ["sievec", "-c", root / DOVECOT_CONF.lstrip("/"), root / path.lstrip("/"), tmp_path / "out.svbin"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{path}: {result.stderr}"


# ---- Postfix, as postconf and postmap read it --------------------------------------------------


@pytest.mark.checkers
def test_postfix_delivers_the_maildrop_domain_to_dovecot(stacks, staged, stack_name):
    stack = stacks[stack_name]
    for host in stack.hosts.maildrop:
        root = staged[stack_name, host.name]
        assert postconf(root, "-h", "virtual_mailbox_domains") == maildrop_domain(stack)
        assert postconf(root, "-h", "virtual_alias_maps") == f"hash:{VIRTUAL_MAILDROP}"
        assert postconf(root, "-h", "virtual_mailbox_maps") == f"hash:{VIRTUAL_MAILDROP}"
        # The maildrop domain is Dovecot's: Postfix must not think it is local.
        assert maildrop_domain(stack) not in postconf(root, "-x", "-h", "mydestination").replace(",", " ").split()


@pytest.mark.checkers
def test_virtual_maildrop_knows_exactly_the_mailboxes(stacks, staged, stack_name):
    stack = stacks[stack_name]
    root = staged[stack_name, stack.maildrop_primary.name]
    table = f"hash:{root / VIRTUAL_MAILDROP.lstrip('/')}"
    config = root / "etc/postfix"
    for mailbox in stack.mailbox_names:
        query = subprocess.run(
            ["postmap", "-c", config, "-q", f"{mailbox}@{maildrop_domain(stack)}", table], capture_output=True
        )
        assert query.stdout.decode().strip() == mailbox
    unknown = subprocess.run(
        ["postmap", "-c", config, "-q", f"nosuchuser@{maildrop_domain(stack)}", table], capture_output=True
    )
    assert unknown.returncode == 1 and unknown.stdout == b""
    # The user the table names comes back into the maildrop domain (myorigin), i.e. to Dovecot.
    assert postconf(root, "-h", "myorigin") == maildrop_domain(stack)


@pytest.mark.checkers
def test_postfix_takes_mail_from_the_smtp_in_hosts_only(stacks, staged, stack_name):
    stack = stacks[stack_name]
    root = staged[stack_name, stack.maildrop_primary.name]
    mynetworks = postconf(root, "-h", "mynetworks").replace(",", " ").split()
    expected = {"127.0.0.0/8", "[::1]/128"}
    expected |= {n for h in stack.hosts.smtp_in for n in (f"[{h.ipv6}]/128", f"{h.ipv4}/32")}
    assert set(mynetworks) == expected
    assert postconf(root, "-h", "smtpd_client_restrictions").replace(",", " ").split() == [
        "permit_mynetworks",
        "reject",
    ]
    assert "reject_unauth_destination" in postconf(root, "-h", "smtpd_recipient_restrictions")
    # Spam checks happened on smtp-in: no DNSBL, no milter here.
    assert "reject_rbl_client" not in postconf(root, "-n")
    assert postconf(root, "-h", "smtpd_milters") == ""


@pytest.mark.checkers
def test_postfix_listens_on_smtp_and_smtps_without_sasl(stacks, staged, stack_name):
    root = staged[stack_name, stacks[stack_name].maildrop_primary.name]
    services = postconf(root, "-M")
    assert "smtp       inet" in services.replace("smtp      inet", "smtp       inet")
    smtps = postconf(root, "-P", "smtps/inet/smtpd_tls_wrappermode", "smtps/inet/smtpd_sasl_auth_enable")
    assert "smtps/inet/smtpd_tls_wrappermode = yes" in smtps
    assert "smtps/inet/smtpd_sasl_auth_enable = no" in smtps
    assert "smtp/inet/smtpd_sasl_auth_enable = no" in postconf(root, "-P", "smtp/inet/smtpd_sasl_auth_enable")
    assert "submission" not in services


# ---- secrets -----------------------------------------------------------------------------------


def test_secrets_are_readable_only_by_the_daemons_that_need_them(stacks, keys, maildrops, stack_name):
    stack, key = stacks[stack_name], keys[stack_name]
    for tree in maildrops[stack_name].values():
        files = tree.files
        assert (files[DOVECOT_CONF].mode, files[DOVECOT_CONF].owner, files[DOVECOT_CONF].group) == (
            0o640,
            "root",
            "dovecot",
        )
        assert (files[USERS_FILE].mode, files[USERS_FILE].owner, files[USERS_FILE].group) == (0o640, "root", "dovecot")
        password = files[RSPAMD_PASSWORD_FILE]
        assert (password.mode, password.owner, password.group) == (0o640, "root", "vmail")
        assert files[tls_key_path(stack)].mode == 0o600
        secrets = [key.doveadm_password, rspamd_controller_password(key), key.tls_key.strip()]
        secrets += [key.password_hashes[m] for m in stack.mailbox_names]
        for path, spec in files.items():
            if spec.mode & 0o004:
                leaked = [s for s in secrets if s in spec.content]
                assert not leaked, f"{path} is world-readable and holds a secret"


def test_the_users_file_lists_every_mailbox_with_its_hash(stacks, keys, maildrops, stack_name):
    stack, key = stacks[stack_name], keys[stack_name]
    for tree in maildrops[stack_name].values():
        lines = tree.files[USERS_FILE].content.splitlines()
        assert lines == [f"{m}:{key.password_hashes[m]}::::" for m in stack.mailbox_names]


# ---- IMAPSieve training, run by Dovecot's imap -------------------------------------------------

RECORDING_LEARN_SCRIPT = '#!/bin/sh\necho "{learn} $1 $(grep -c ^Subject:)" >> {log}\n'

# An IMAP session on stdin: deliver one message, report it as spam, then take it out of Junk twice:
# thrown into Trash (not ham) and moved back to INBOX (ham).
IMAP_SESSION = [
    "a1 APPEND INBOX {29+}",
    "Subject: win a prize\r\n\r\nbody",
    "a2 SELECT INBOX",
    "a3 COPY 1 Junk",
    "a4 SELECT Junk",
    "a5 COPY 1 Trash",
    "a6 MOVE 1 INBOX",
    "a7 LOGOUT",
]

IMAP_IN_NAMESPACE = """
set -e
mount --bind "$STAGED/etc/dovecot" /etc/dovecot
# Compile the global scripts as the push's "sieve" service does (vmail cannot write them).
sievec -c /etc/dovecot/dovecot.conf /etc/dovecot/sieve
# imap runs the session from stdin; the pause keeps stdin open until it has answered everything.
{ cat "$SESSION"; sleep 1; } | setpriv --reuid=nobody --regid=nogroup --clear-groups \
  env -i USER="$MAILBOX" HOME="$WORK/home" PATH=/usr/bin:/bin /usr/lib/dovecot/imap -o log_path=/dev/stderr
"""


@pytest.fixture
def world_traversable_dir():
    """A scratch directory the imap process (as nobody) can reach; pytest's tmp_path is root-only."""
    with tempfile.TemporaryDirectory(prefix="maildrop-imap-") as work:
        Path(work).chmod(0o755)
        yield Path(work)


@pytest.mark.checkers
def test_junk_trains_spam_and_ham_but_junk_to_trash_trains_nothing(
    stacks, maildrops, stack_name, world_traversable_dir
):
    stack, work = stacks[stack_name], world_traversable_dir
    tree = maildrops[stack_name][stack.maildrop_primary.name]
    log = work / "learned"
    log.touch()
    log.chmod(0o666)
    files = dict(tree.files)
    # The real scripts would call rspamd on the smtp-in hosts: record the calls instead.
    for learn in ("spam", "ham"):
        recorder = RECORDING_LEARN_SCRIPT.format(learn=f"learn_{learn}", log=log)
        files[f"{SIEVE_DIR}/rspamd-learn-{learn}.sh"] = FileSpec(recorder, mode=0o755)
    root = stage(replace(tree, files=files), work / "staged")
    (work / "home").mkdir()
    (work / "home").chmod(0o777)
    session = work / "session"
    session.write_bytes(("\r\n".join(IMAP_SESSION) + "\r\n").encode())
    mailbox = stack.mailbox_names[0]
    env = {**os.environ, "STAGED": str(root), "MAILBOX": mailbox, "WORK": str(work), "SESSION": str(session)}
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", IMAP_IN_NAMESPACE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for tag in ("a3", "a5", "a6"):
        assert f"{tag} OK" in result.stdout, result.stdout + result.stderr
    assert "sieve:" not in result.stderr, result.stderr
    assert log.read_text().splitlines() == [f"learn_spam {mailbox} 1", f"learn_ham {mailbox} 1"]


SPAM = "From: someone@example.org\r\nX-Spam: Yes\r\nSubject: cheap\r\n\r\nbody\r\n"
HAM = "From: someone@example.org\r\nSubject: hello\r\n\r\nbody\r\n"


@pytest.mark.checkers
@pytest.mark.parametrize(("message", "junk"), [(SPAM, True), (HAM, False)])
def test_delivery_files_what_rspamd_tagged_into_junk_before_the_users_script(
    maildrops, stacks, world_traversable_dir, message, junk
):
    """sieve-test runs the before.d script, then default.sieve where a user's own script would run."""
    stack = stacks["lab"]
    root = stage(maildrops["lab"][stack.maildrop_primary.name], world_traversable_dir / "staged")
    mail = world_traversable_dir / "message.eml"
    mail.write_text(message)
    sieve = root / SIEVE_DIR.lstrip("/")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i"]
    environment = ["HOME=/nonexistent", f"USER={stack.mailbox_names[0]}", "PATH=/usr/bin:/bin"]
    sieve_test = ["sieve-test", "-c", root / DOVECOT_CONF.lstrip("/"), "-s", sieve / "before.d/10-junk.sieve"]
    result = subprocess.run(
        [*as_nobody, *environment, *sieve_test, sieve / "default.sieve", mail], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert ("store message in folder: Junk" in result.stdout) == junk, result.stdout
    # Filed as spam, the user's own script does not run (and cannot move it back to INBOX).
    assert (f"Executing script: {sieve}/default.sieve" in result.stdout) != junk, result.stdout


@pytest.mark.checkers
def test_a_message_filed_as_spam_is_touched_by_no_later_rule_of_the_junk_script(
    maildrops, stacks, world_traversable_dir
):
    """The Junk rule ends its script: a rule someone adds after it (here one filing everything into
    Lists) must not file spam a second time. Pigeonhole ends the script sequence itself once the
    implicit keep is cancelled, but not the rest of the same script: that is the rule's `stop`."""
    stack = stacks["lab"]
    root = stage(maildrops["lab"][stack.maildrop_primary.name], world_traversable_dir / "staged")
    junk = root / SIEVE_DIR.lstrip("/") / "before.d/10-junk.sieve"
    junk.write_text(junk.read_text() + '\nfileinto "Lists";\n')
    mail = world_traversable_dir / "message.eml"
    mail.write_text(SPAM)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i"]
    environment = ["HOME=/nonexistent", f"USER={stack.mailbox_names[0]}", "PATH=/usr/bin:/bin"]
    sieve_test = ["sieve-test", "-c", root / DOVECOT_CONF.lstrip("/"), junk, mail]
    result = subprocess.run([*as_nobody, *environment, *sieve_test], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "store message in folder: Junk" in result.stdout, result.stdout
    assert "Lists" not in result.stdout, result.stdout


# ---- the learn scripts, against stand-in rspamd controllers ------------------------------------

# Runs in a new network namespace: the smtp-in addresses on its loopback, a stand-in controller on
# all but the last (which is "down"), then the rendered learn script with a message on stdin.
CONTROLLERS_IN_NAMESPACE = """
import http.server, json, os, subprocess, sys, threading, time

addresses, port, script = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
subprocess.run(["mount", "--bind", os.environ["STAGED_ETC_DOVECOT"], "/etc/dovecot"], check=True)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for address in addresses:
    subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], check=True)
seen = []

class Controller(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen.append({"controller": self.server.server_address[0], "path": self.path,
                     "password": self.headers.get("Password"), "body": body.decode(errors="replace")})
        reply = json.dumps({"success": True}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6

for address in addresses[:-1]:
    server = Server((address, port), Controller)
    threading.Thread(target=server.serve_forever, daemon=True).start()
start = time.monotonic()
run = subprocess.run([script, "someone"], input=b"Subject: learn me\\r\\n\\r\\nbody\\r\\n", capture_output=True)
print(json.dumps({"rc": run.returncode, "seconds": time.monotonic() - start, "seen": seen}))
"""


@pytest.mark.checkers
@pytest.mark.parametrize("learn", ["spam", "ham"])
def test_learn_script_teaches_every_reachable_controller_and_tolerates_one_down(
    stacks, keys, maildrops, tmp_path, learn
):
    # The lab stack: its smtp-in addresses are documentation addresses, only ever on our loopback.
    stack, key = stacks["lab"], keys["lab"]
    tree = maildrops["lab"][stack.maildrop_primary.name]
    root = stage(tree, tmp_path)
    addresses = [str(h.ipv6) for h in stack.hosts.smtp_in]
    result = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            textwrap.dedent(CONTROLLERS_IN_NAMESPACE),
            json.dumps(addresses),
            str(stack.ports.rspamd_controller),
            f"{SIEVE_DIR}/rspamd-learn-{learn}.sh",
        ],
        env={**os.environ, "STAGED_ETC_DOVECOT": str(root / "etc/dovecot")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["rc"] == 0
    assert outcome["seconds"] < 10  # Dovecot's sieve_pipe_exec_timeout
    assert sorted(s["controller"] for s in outcome["seen"]) == sorted(addresses[:-1])
    for request in outcome["seen"]:
        assert request["path"] == f"/learn{learn}"
        assert request["password"] == rspamd_controller_password(key)
        assert "Subject: learn me" in request["body"]


# ---- security: clients through the frontends only, TLS policy, local mail reaches a person -----


@pytest.mark.checkers
def test_imaps_and_managesieve_take_the_client_address_from_the_frontends_and_the_host_only(stacks, staged, stack_name):
    stack = stacks[stack_name]
    root = staged[stack_name, stack.maildrop_primary.name]
    assert doveconf(root, "service/imap-login/inet_listener/imaps/haproxy") == "yes"
    assert doveconf(root, "service/managesieve-login/inet_listener/sieve/haproxy") == "yes"
    trusted = doveconf(root, "haproxy_trusted_networks").split()
    # Loopback: the push's probes greet on both listeners from the host itself after a reload.
    frontends = [a for h in stack.hosts.frontend for a in h.site_local_addresses]
    assert sorted(trusted) == sorted([*frontends, "127.0.0.1", "::1"])


@pytest.mark.checkers
def test_imaps_and_managesieve_speak_tls_1_2_and_newer_with_strong_suites_only(stacks, staged, stack_name):
    root = staged[stack_name, stacks[stack_name].maildrop_primary.name]
    assert doveconf(root, "ssl_min_protocol") == "TLSv1.2"
    assert doveconf(root, "ssl_cipher_list") == tls.CIPHERS


@pytest.mark.checkers
def test_maildrop_mail_to_root_and_postmaster_reaches_a_reader(stacks, maildrops, stack_name, tmp_path):
    """Local mail (cron, bounces, double bounces) goes through /etc/postfix/aliases: without it,
    root's mail would sit in a maildrop's queue that nobody reads."""
    stack = stacks[stack_name]
    tree = maildrops[stack_name][stack.maildrop_primary.name]
    spec = tree.files.get("/etc/postfix/aliases")
    assert spec is not None and spec.postmap, "the maildrop has no /etc/postfix/aliases table"
    root = stage(tree, tmp_path)
    table = root / "etc/postfix/aliases"
    subprocess.run(["postmap", "-c", root / "etc/postfix", table], check=True)
    assert postconf(root, "-h", "alias_maps") == "hash:/etc/postfix/aliases"
    lookup = ["postmap", "-c", root / "etc/postfix", "-q"]
    assert subprocess.run([*lookup, "root", table], capture_output=True, text=True).stdout.strip() == (
        stack.dns.report_address or f"postmaster@{stack.domains[0].name}"
    )
    assert subprocess.run([*lookup, "postmaster", table], capture_output=True, text=True).stdout.strip() == "root"


def test_dovecot_starts_only_with_the_mail_volume_mounted(maildrops, stack_name):
    # Without it, a maildrop whose mail volume failed to mount would take mail onto its root disk.
    for tree in maildrops[stack_name].values():
        assert "[Unit]\nRequiresMountsFor=/var/dovecot/users\n" in tree.files[UNIT_DROP_IN].content
