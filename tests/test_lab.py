"""The lab: the whole stack in network namespaces, on the real Debian daemons and the rendered files.

The first tests need no privileges (the lab's plan and zones). The others bring the lab up once
for the module (`python3 -m lab up`, about a minute) unless it already runs, send mail through it
as the internet and a user would, and finally take it down again and check that nothing is left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.reversename
import pytest

from lab import NETNS_PREFIX, STATE_DIR, clients, cluster, daemons, dns_server, internet, network, state
from lab.netns import in_netns
from render import render_host

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "lab-logs"


def needs_lab(test):
    return pytest.mark.lab(test)


# ---- the plan, without running anything ---------------------------------------------------------


def test_lab_network_uses_documentation_addresses_only(stacks):
    topology = network.plan(stacks["lab"])
    addresses = [a.ip for nic in topology.nics for a in nic.addresses] + [
        a.ip for seg in topology.segments for a in seg.router
    ]
    assert addresses
    assert all(any(a in net for net in network.DOCUMENTATION) for a in addresses)
    assert all(name.startswith(NETNS_PREFIX) for name in topology.namespaces)


def test_lab_refuses_a_stack_with_real_addresses(stacks):
    with pytest.raises(ValueError, match="documentation"):
        network.plan(stacks["prod"])


def test_lab_routes_public_addresses_to_the_hosts_site_local_address(stacks):
    stack = stacks["lab"]
    routes = {public: via for seg in network.plan(stack).segments for public, via in seg.host_routes}
    for host in stack.hosts.smtp_in + stack.hosts.frontend:
        assert routes[str(host.public_ipv4)] == str(host.ipv4)
        assert routes[str(host.public_ipv6)] == str(host.ipv6)


def test_lab_waits_for_every_daemon_on_ports_of_the_model(stacks):
    stack = stacks["lab"]
    roles = ("smtp_out", "smtp_in", "maildrop", "frontend", "webmail", "relay_client", "remote_mta")
    for role in roles:
        for name in daemons.DAEMONS:
            ready = daemons.readiness(stack, role, name)
            assert all(isinstance(p, int) and 0 < p < 65536 for p in ready.tcp), (role, name)
    assert stack.ports.submission in daemons.readiness(stack, "frontend", "nginx").tcp
    assert daemons.readiness(stack, "rspamd", "rspamd").http is not None


@pytest.mark.skipif(not shutil.which("nsd-checkzone"), reason="needs nsd")
def test_lab_zones_pass_nsd_checkzone_and_list_the_test_dnsbl_entries(stacks, keys, tmp_path):
    zones = dns_server.zones(stacks["lab"], keys["lab"])
    dns_server.write_config(tmp_path, zones)  # raises with nsd-checkzone's message
    assert set(stacks["lab"].domain_names) <= set(zones)
    assert "66.113.0.203 IN A 127.0.0.2" in zones[dns_server.LISTING_DNSBL]
    assert "* IN A 127.255.255.254" in zones[dns_server.REFUSING_DNSBL]


# ---- the running lab ----------------------------------------------------------------------------


@needs_lab
def test_lab_status_json_has_hosts_endpoints_and_accounts(lab):
    result = subprocess.run(
        [sys.executable, "-m", "lab", "status", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    status = json.loads(result.stdout)
    assert status["up"] is True
    assert {"name", "role", "netns", "addresses"} <= set(status["hosts"][0])
    assert status["client_netns"] == internet.NETNS
    for endpoint in ("submission", "imaps", "managesieve"):
        assert set(status["endpoints"][endpoint]) >= {"host", "port"}
    assert all(set(mx) >= {"host", "port"} for mx in status["endpoints"]["mx"])
    assert [a["user"] for a in status["accounts"]] == ["alice", "bob"]
    assert all(set(a) >= {"user", "address", "password"} for a in status["accounts"])
    assert all(all(d["alive"] for d in h["daemons"]) for h in status["hosts"])


@needs_lab
def test_lab_up_twice_changes_nothing(lab):
    before = {(h["name"], d["name"]): d["pid"] for h in cluster.status()["hosts"] for d in h["daemons"]}
    cluster.up(progress=lambda _: None)
    after = {(h["name"], d["name"]): d["pid"] for h in cluster.status()["hosts"] for d in h["daemons"]}
    assert after == before


@needs_lab
def test_lab_mail_from_the_internet_reaches_alice_over_imaps_through_the_frontend(lab):
    alice = lab["accounts"][0]
    message_id, text = clients.message(f"dave@{internet.REMOTE_DOMAIN}", alice["address"], "inbound")
    client = clients.smtp(lab, lab["endpoints"]["mx"][1])
    try:
        client.sendmail(f"dave@{internet.REMOTE_DOMAIN}", [alice["address"]], text)
    finally:
        client.quit()
    raw = clients.imap_message(lab, alice, message_id)
    assert raw is not None, "not in alice's INBOX within 30 s"
    assert b"by maildrop0.chbtl0.example.com" in raw  # the primary maildrop (MX 10) took it


@needs_lab
def test_lab_submission_through_the_frontend_reaches_the_remote_mta_dkim_signed(lab):
    alice = lab["accounts"][0]
    recipient = f"eve@{internet.REMOTE_DOMAIN}"
    message_id, text = clients.message(alice["address"], recipient, "outbound")
    with clients.submission(lab, alice) as client:
        client.sendmail(alice["address"], [recipient], text)
    message = clients.remote_message(lab, recipient, message_id)
    assert message is not None, "not at the remote MTA within 30 s"
    assert "s=lab2026" in message["DKIM-Signature"]  # the active selector signs, lab2027 only published
    assert clients.dkim_verify(lab, message.as_bytes())


@needs_lab
def test_lab_hosts_have_their_own_hostname_and_postfix_queue(lab):
    roots = cluster.host_roots()
    for name in ("smtp-in-chrma0", "maildrop1-ddln0"):
        assert roots[name].run(["hostname"]).stdout.strip() == name
    queue = "/var/spool/postfix/pid/master.pid"
    masters = {roots[n].outside(queue).read_text().split()[0] for n in ("smtp-in-chrma0", "smtp-in-frggh0")}
    assert len(masters) == 2


@needs_lab
def test_lab_refuses_a_tree_that_fails_its_check_and_keeps_the_running_config(lab, stacks):
    """What the lab installs goes through the push's checks: a broken main.cf never reaches Postfix."""
    stack = stacks["lab"]
    host = next(h for h in stack.hosts.smtp_in if h.name == "smtp-in-chrma0")
    tree = render_host(stack, "smtp_in", host, state.load_keys())
    main_cf = tree.files["/etc/postfix/main.cf"]
    broken = replace(
        tree,
        files={**tree.files, "/etc/postfix/main.cf": replace(main_cf, content=main_cf.content + "no equals sign\n")},
    )
    root = cluster.host_roots()[host.name]
    running = root.outside("/etc/postfix/main.cf").read_text()
    with pytest.raises(RuntimeError, match=r"(?s)refused, nothing installed.*missing '='"):
        cluster.push(cluster.LabHost(host.name, "smtp_in", stack.fqdn(host), broken), broken)
    assert root.outside("/etc/postfix/main.cf").read_text() == running
    assert root.run(["postfix", "status"]).returncode == 0


@needs_lab
def test_lab_stop_and_start_take_one_host_down_and_back(lab):
    """`python -m lab stop|start HOST`: how an operator tries a failover before `pulumi up`."""

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lab", *argv], cwd=ROOT, capture_output=True, text=True)

    def alive() -> list[bool]:
        host = next(h for h in cluster.status()["hosts"] if h["name"] == "nginx0-nlams2")
        return [d["alive"] for d in host["daemons"]]

    assert run("stop", "nginx0-nlams2").returncode == 0
    try:
        assert alive() and not any(alive())
        assert cluster.status()["up"] is False
    finally:
        started = run("start", "nginx0-nlams2")
    assert started.returncode == 0, started.stderr
    assert all(alive()) and cluster.status()["up"] is True
    assert run("stop", "no-such-host").returncode == 1


@needs_lab
def test_lab_dns_answers_every_lookup_of_a_burst_from_one_host(lab):
    """A maildrop's smtpd looks up the name of every smtp-in connecting, against the lab DNS: under
    load that is hundreds of lookups a second from one /24. A dropped answer costs the SMTP greeting
    glibc's 5 s retry (what NSD's default response rate limiting did)."""
    maildrop = next(h for h in lab["hosts"] if h["name"] == "maildrop0-chbtl0")
    smtp_in = next(h for h in lab["hosts"] if h["name"] == "smtp-in-chrma0")
    queries = [dns.message.make_query(dns.reversename.from_address(a), "PTR") for a in smtp_in["addresses"]]
    with in_netns(maildrop["netns"]):
        for server in internet.DNS_SERVER:
            for n in range(500):  # well over NSD's default limit of 200 a second
                try:
                    answer = dns.query.udp(queries[n % len(queries)], server, timeout=1)
                except dns.exception.Timeout:
                    pytest.fail(f"lookup {n} to {server} went unanswered")
                assert not answer.flags & dns.flags.TC, f"lookup {n} to {server}: truncated (rate limited)"


@needs_lab
def test_lab_namespaces_route_only_documentation_prefixes(lab):
    for netns in network.existing():
        routes = subprocess.run(
            ["ip", "-n", netns, "-j", "route", "show", "table", "all"], capture_output=True, text=True
        )
        for route in json.loads(routes.stdout or "[]"):
            dst = route.get("dst", "")
            if dst in ("default", "") or dst.startswith(("fe80", "ff00", "127.", "::1", "multicast", "local")):
                continue
            if route.get("type") in ("local", "broadcast", "multicast", "anycast"):
                continue
            address = ip_network(dst, strict=False)
            assert any(address.subnet_of(n) for n in network.DOCUMENTATION if n.version == address.version), (
                netns,
                route,
            )
    root_links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout
    assert not any(link.get("link_netnsid") is not None for link in json.loads(root_links)), "a veth in the root ns"


@needs_lab
@pytest.mark.lab_teardown
def test_lab_down_removes_every_namespace_mount_and_process(lab):
    if not lab["started_here"]:
        pytest.skip("the lab was running before the tests: left up")
    cluster.save_logs(ARTIFACTS)
    # Every daemon running now (failover tests restart some: not the fixture's first pids).
    daemon_pids = [d["pid"] for h in cluster.status()["hosts"] for d in h["daemons"]]
    assert daemon_pids
    result = subprocess.run(
        [sys.executable, "-m", "lab", "down"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert network.existing() == []
    mount_points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mount_points if m == str(STATE_DIR) or m.startswith(f"{STATE_DIR}/")]
    assert not STATE_DIR.exists()
    assert not [p for p in daemon_pids if Path(f"/proc/{p}").exists() and b"Z" not in _state(p)]


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"
