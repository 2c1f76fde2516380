"""The cluster's security as a client, an attacker and a TLS scanner see it in the running lab:
every client has its own limits and is logged under its own address behind the frontends; a login
sends only as its own addresses; TLS below 1.2 and anonymous suites are refused where passwords
travel; VRFY tells nothing; every domain's postmaster reads mail; a maildrop relays for nobody.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from lab_mailflow_helpers import doveadm_message, mx_session, unique_address

from lab import clients, cluster, internet
from lab.netns import in_netns, netns_path
from lab.traffic import proxy_header
from model import load_stack_file
from render.smtp_out import mailboxes_reached

STACK = load_stack_file("lab")
FRONTEND = STACK.frontend_primary
PRIMARY = STACK.maildrop_primary
SMTP_IN = STACK.hosts.smtp_in[0]
SMTP_OUT = STACK.smtp_out_primary
TESTSSL = "testssl"


def account(lab: dict, user: str) -> dict:
    return next(a for a in lab["accounts"] + lab["service_accounts"] if a["user"] == user)


def netns(lab: dict, host: str) -> str:
    return next(h["netns"] for h in lab["hosts"] if h["name"] == host)


def syslog(host: str) -> str:
    return (cluster.host_roots()[host].logs / "syslog").read_text(errors="replace")


def submission_endpoint(address: str) -> dict:
    return {"host": address, "port": STACK.ports.submission, "name": STACK.service_name("smtp-out")}


# ---- the real client behind the frontends ---------------------------------------------------------


def wait_out_rate_window(host: str, sources: list[str]) -> None:
    """Until a minute (Postfix's anvil_rate_time_unit) has passed since `host` last logged a
    connection from one of `sources`: an earlier run on the same lab must not have spent their budget."""
    stamps = [
        line.split()[0]
        for line in syslog(host).splitlines()
        if " connect from " in line and any(f"[{s}]" in line for s in sources)
    ]
    if not stamps:
        return
    last = datetime.strptime(stamps[-1], "%H:%M:%S.%f").time()
    now = datetime.now()
    elapsed = (now - datetime.combine(now.date(), last)).total_seconds() % 86400
    if elapsed < 61:
        time.sleep(61 - elapsed)


@pytest.mark.lab
def test_two_clients_of_one_frontend_each_get_their_own_submission_limits(lab):
    """smtp-out allows one client 10 connections a minute. Behind one frontend, two clients' dozen
    submissions within seconds are all accepted: each client has its own budget, not the frontend's."""
    alice = account(lab, "alice")
    # Two internet addresses no other test submits from, each reaching the same frontend.
    sources = [
        (internet.OTHER_CLIENT[0], str(FRONTEND.public_ipv4)),
        (internet.OTHER_CLIENT[1], str(FRONTEND.public_ipv6)),
    ]
    wait_out_rate_window(SMTP_OUT.name, [s for s, _ in sources])
    started = time.monotonic()
    for n in range(12):
        source, frontend = sources[n % 2]
        client = clients.smtp(lab, submission_endpoint(frontend), source=source, patient=False)
        try:
            client.login(alice["user"], alice["password"])
            recipient = unique_address("limits")
            _, text = clients.message(alice["address"], recipient, f"limits {n}")
            assert client.sendmail(alice["address"], [recipient], text) == {}
        finally:
            client.quit()
    assert time.monotonic() - started < 30
    log = syslog(SMTP_OUT.name)
    for source, _ in sources:
        assert "postfix/submission/smtpd[" in log and f"[{source}]" in log, f"smtp-out never logged {source}"


@pytest.mark.lab
def test_the_maildrop_logs_the_real_client_address_of_an_imap_login(lab):
    before = len(syslog(PRIMARY.name))
    client = clients.imaps(lab, account(lab, "alice"))
    client.logout()

    def login_lines() -> list[str] | None:
        lines = [ln for ln in syslog(PRIMARY.name)[before:].splitlines() if "imap-login: Login: user=<alice>" in ln]
        return lines or None

    lines = clients.wait_for(login_lines, 10, interval=0.3)
    assert lines, f"no IMAP login of alice in {PRIMARY.name}'s log"
    assert any(f"rip={internet.ALLOWED_CLIENT[0]}," in ln for ln in lines), lines
    frontends = {a for h in STACK.hosts.frontend for a in h.site_local_addresses}
    assert not any(re.search(rf"rip={re.escape(a)},", ln) for ln in lines for a in frontends), lines


@pytest.mark.lab
def test_smtp_out_without_the_proxy_header_gives_no_smtp_session(lab):
    """Straight to smtp-out's submission port, as a frontend would but without the PROXY header:
    no banner, and the connection ends."""
    with in_netns(netns(lab, FRONTEND.name)):
        sock = socket.create_connection((str(SMTP_OUT.ipv6), STACK.ports.submission), timeout=5)
    sock.settimeout(10)
    try:
        sock.sendall(b"EHLO client.remote.test\r\n")
        received = b""
        while chunk := sock.recv(512):
            received += chunk
    except OSError:
        pass
    finally:
        sock.close()
    assert not received.startswith(b"220"), received


@pytest.mark.lab
@pytest.mark.parametrize("from_host", ["frontend without the header", "smtp-in with a header"])
def test_a_maildrop_takes_imaps_only_from_a_frontend_with_the_proxy_header(lab, from_host):
    source = FRONTEND if from_host.startswith("frontend") else SMTP_IN
    with in_netns(netns(lab, source.name)):
        sock = socket.create_connection((str(PRIMARY.ipv6), STACK.ports.imaps), timeout=5)
    try:
        if from_host.endswith("with a header"):
            sock.sendall(proxy_header(sock))
        context = clients.tls_context(lab)
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(sock, server_hostname=STACK.service_name("imap")).recv(100)
    finally:
        sock.close()


# ---- senders are who they logged in as -------------------------------------------------------------


def rcpt_code(lab: dict, user: str, sender: str) -> tuple[int, str]:
    login = account(lab, user)
    with clients.submission(lab, login) as client:
        code, text = client.mail(sender)
        if code == 250:
            code, text = client.rcpt(unique_address("spoof"))
        client.rset()
    return code, text.decode()


@pytest.mark.lab
@pytest.mark.parametrize(
    ("user", "sender"),
    [
        ("alice", "bob@example.com"),
        ("alice", "boss@remote.test"),
        ("cron", "alice@example.com"),
        ("bob", "alice@example.net"),
    ],
    ids=["another user", "an outside address", "a relay group as a user", "another user's alias"],
)
def test_sending_as_another_user_is_refused(lab, user, sender):
    code, text = rcpt_code(lab, user, sender)
    assert code == 553 and "not owned by user" in text, (code, text)


@pytest.mark.lab
def test_a_user_sends_as_the_aliases_that_deliver_to_them(lab):
    for sender in ("alice@example.com", "team@example.com", "postmaster@example.net"):
        assert rcpt_code(lab, "alice", sender)[0] == 250, sender


# ---- TLS: what a client may negotiate ------------------------------------------------------------


def openssl(ns: str, address: str, port: int, name: str, *args: str, starttls: str | None = None, ca: str) -> str:
    """openssl s_client's report of one handshake from namespace `ns`; waits out Postfix's 421 (too
    many connections from this client), which openssl reports as a server without STARTTLS."""
    host = f"[{address}]" if ":" in address else address
    argv = ["nsenter", f"--net={netns_path(ns)}", "openssl", "s_client", "-connect", f"{host}:{port}"]
    argv += ["-servername", name, "-CAfile", ca, *args, *(["-starttls", starttls] if starttls else [])]
    deadline = time.monotonic() + clients.RATE_LIMIT_WAIT
    while True:
        result = subprocess.run(argv, input="Q\n", capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        if "Didn't find STARTTLS" not in output or time.monotonic() > deadline:
            return output
        time.sleep(3)


def negotiated(output: str) -> str | None:
    found = re.search(r"Cipher is (\S+)", output)
    return None if found is None or found.group(1) == "(NONE)" else found.group(1)


TLS_ENDPOINTS = {
    # name: (address, port, certificate name, STARTTLS protocol)
    "smtps 465": (str(SMTP_IN.public_ipv4), STACK.ports.smtps, STACK.service_name("smtp-in"), None),
    # From the webmail host, which smtp-out's per-client limits spare: the internet's test client
    # has used up its minute on submission by now.
    "submission 587": (str(FRONTEND.public_ipv4), STACK.ports.submission, STACK.service_name("smtp-out"), "smtp"),
    "imaps 993": (str(FRONTEND.public_ipv4), STACK.ports.imaps, STACK.service_name("imap"), None),
    "managesieve 4190": (str(FRONTEND.public_ipv4), STACK.ports.managesieve, STACK.service_name("imap"), "sieve"),
    "https 443": (str(FRONTEND.public_ipv4), 443, STACK.service_name("webmail"), None),
}
# Debian 12's openssl offers TLS 1.1 and anonymous suites only at security level 0.
REFUSED = {
    "TLS 1.1": ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),
    "an anonymous suite": ("-tls1_2", "-cipher", "aNULL:@SECLEVEL=0"),
    "a NULL suite": ("-tls1_2", "-cipher", "eNULL:@SECLEVEL=0"),
}


@pytest.mark.lab
@pytest.mark.parametrize("endpoint", list(TLS_ENDPOINTS))
@pytest.mark.parametrize("offer", list(REFUSED))
def test_old_tls_and_anonymous_suites_are_refused_where_passwords_travel(lab, endpoint, offer):
    address, port, name, starttls = TLS_ENDPOINTS[endpoint]
    common = {"starttls": starttls, "ca": lab["ca_file"]}
    ns = netns(lab, STACK.webmail.host) if port == STACK.ports.submission else lab["client_netns"]
    control = openssl(ns, address, port, name, "-tls1_2", **common)
    assert negotiated(control) and "Verify return code: 0 (ok)" in control, control  # the port speaks TLS 1.2
    refused = openssl(ns, address, port, name, *REFUSED[offer], **common)
    assert negotiated(refused) is None, refused


@pytest.mark.lab
def test_port_25_is_opportunistic_but_never_anonymous(lab):
    address, name = str(SMTP_IN.public_ipv4), STACK.service_name("smtp-in")
    common = {"starttls": "smtp", "ca": lab["ca_file"]}
    assert negotiated(openssl(lab["client_netns"], address, STACK.ports.smtp, name, "-tls1_2", **common))
    for offer in ("an anonymous suite", "a NULL suite"):
        output = openssl(lab["client_netns"], address, STACK.ports.smtp, name, *REFUSED[offer], **common)
        assert negotiated(output) is None, output


# testssl.sh against every TLS endpoint, from where the per-client limits do not trip it (it opens
# dozens of connections a minute): smtp-in's and the maildrop's own loopback (mynetworks), the
# webmail host for submission (exempt on smtp-out), the internet for NGINX's 993 and 443.
# (host whose network it runs in or None for the internet, address, port, name, STARTTLS, TLS 1.2+ only)
TESTSSL_ENDPOINTS = {
    "smtp-in 25": (SMTP_IN.name, "127.0.0.1", STACK.ports.smtp, STACK.service_name("smtp-in"), "smtp", False),
    "smtp-in 465": (SMTP_IN.name, "127.0.0.1", STACK.ports.smtps, STACK.service_name("smtp-in"), None, True),
    "submission 587": (
        STACK.webmail.host,
        str(FRONTEND.public_ipv4),
        STACK.ports.submission,
        STACK.service_name("smtp-out"),
        "smtp",
        True,
    ),
    "imaps 993": (None, str(FRONTEND.public_ipv4), STACK.ports.imaps, STACK.service_name("imap"), None, True),
    "webmail 443": (None, str(FRONTEND.public_ipv4), 443, STACK.service_name("webmail"), None, True),
    "mta-sts 443": (None, str(FRONTEND.public_ipv4), 443, f"mta-sts.{STACK.domains[0].name}", None, True),
    "maildrop 25": (PRIMARY.name, "127.0.0.1", STACK.ports.smtp, STACK.service_name("maildrop"), "smtp", False),
}


def run_testssl(lab: dict, ns: str, address: str, port: int, name: str, starttls: str | None, out: Path) -> list[dict]:
    """testssl.sh's findings (protocols, cipher categories, server defaults with the chain checked
    against the lab CA). It runs in a mount namespace whose resolv.conf names the lab DNS: with the
    machine's resolver out of reach it waits minutes on lookups before it starts."""
    resolv = out.parent / "resolv.conf"
    resolv.write_text(f"nameserver {internet.DNS_SERVER[0]}\n")
    report = out.with_suffix(".json")
    scan = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "min", "--add-ca", lab["ca_file"]]
    scan += ["-p", "-s", "-S", "--jsonfile", str(report), "--ip", address, *(["-t", starttls] if starttls else [])]
    scan += [f"{name}:{port}"]
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {' '.join(scan)}"
    argv = ["nsenter", f"--net={netns_path(ns)}", "unshare", "--mount", "sh", "-c", script]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out.write_text(result.stdout + result.stderr)
    assert report.exists(), out.read_text()
    return json.loads(report.read_text())


@pytest.mark.lab
@pytest.mark.parametrize("endpoint", list(TESTSSL_ENDPOINTS))
def test_testssl_finds_no_old_protocol_no_anonymous_or_null_suite_and_a_verified_chain(lab, endpoint, tmp_path):
    host, address, port, name, starttls, modern_only = TESTSSL_ENDPOINTS[endpoint]
    ns = netns(lab, host) if host else lab["client_netns"]
    findings = {f["id"]: f for f in run_testssl(lab, ns, address, port, name, starttls, tmp_path / "testssl.txt")}
    problems = [f for f in findings.values() if f["id"] in ("scanProblem", "scanTime") and f["severity"] == "FATAL"]
    assert not problems, problems
    assert findings["TLS1_2"]["finding"].startswith("offered"), findings["TLS1_2"]
    for old in ("SSLv2", "SSLv3", *(("TLS1", "TLS1_1") if modern_only else ())):
        assert findings[old]["finding"].startswith("not offered"), findings[old]
    for suites in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT"):
        assert findings[suites]["finding"].startswith("not offered"), findings[suites]
    assert findings["cert_chain_of_trust"]["finding"].startswith("passed"), findings["cert_chain_of_trust"]


# ---- what the cluster tells and takes ------------------------------------------------------------


@pytest.mark.lab
def test_vrfy_confirms_no_address(lab):
    endpoint = {"host": str(SMTP_IN.public_ipv4), "port": STACK.ports.smtp, "name": STACK.service_name("smtp-in")}
    with mx_session(lab, endpoint) as client:
        known = client.verify(account(lab, "alice")["address"])
        unknown = client.verify(f"nobody-{time.time_ns()}@{STACK.domains[0].name}")
    assert known[0] == unknown[0] == 502, (known, unknown)


@pytest.mark.lab
@pytest.mark.parametrize("domain", STACK.domain_names)
def test_mail_to_postmaster_of_every_domain_is_delivered(lab, domain):
    recipient = f"postmaster@{domain}"
    readers = mailboxes_reached(STACK)(recipient)
    assert readers, f"{recipient} reaches no mailbox"
    sender = unique_address("mta")
    message_id, text = clients.message(sender, recipient, f"postmaster {domain}")
    endpoint = {"host": str(SMTP_IN.public_ipv4), "port": STACK.ports.smtp, "name": STACK.service_name("smtp-in")}
    with mx_session(lab, endpoint) as client:
        assert client.sendmail(sender, [recipient], text) == {}
    for user in readers:
        assert doveadm_message(PRIMARY.name, user, message_id, timeout=60), f"not in {user}'s INBOX"


@pytest.mark.lab
def test_a_maildrop_relays_for_nobody_not_even_smtp_in(lab):
    """smtp-in is in the maildrop's mynetworks (it hands over mail); that must not make the maildrop
    an open relay for it."""
    with in_netns(netns(lab, SMTP_IN.name)):
        client = smtplib.SMTP(str(PRIMARY.ipv6), STACK.ports.smtp, local_hostname=STACK.fqdn(SMTP_IN), timeout=30)
    try:
        client.ehlo()
        assert client.mail(unique_address("bounce"))[0] == 250
        code, text = client.rcpt(unique_address("someone"))
    finally:
        client.quit()
    assert 500 <= code < 600 and b"Relay access denied" in text, (code, text)
