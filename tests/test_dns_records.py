"""The DNS the stack publishes, read back the way receivers read it: named-checkzone, pyspf, dkimpy.

No network: the zone text is parsed with dnspython and every lookup is answered from it.
"""

from __future__ import annotations

import importlib.util
import subprocess
from ipaddress import ip_network

import dkim
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
import spf

from render import render_host
from render.dns_records import dkim_public_keys, records, zone_texts
from render.mta_sts import policy, policy_id

MESSAGE = (
    b"From: Alice <alice@{domain}>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: rotation\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <dns-test@{domain}>\r\n"
    b"\r\n"
    b"Signed on smtp-out, checked against the published key.\r\n"
)
# Addresses in none of either stack's egress prefixes.
OUTSIDE = ("100.64.0.1", "2001:db8:ffff::1")


class Zones:
    """The emitted zones as one authoritative view: what the lab's DNS server would answer."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts
        self.zones = {z: dns.zone.from_text(t, origin=z, relativize=False) for z, t in texts.items()}

    def rdataset(self, name: str | bytes, rdtype: str):
        if isinstance(name, bytes):
            name = name.decode()
        owner = dns.name.from_text(name)
        holding = [z for z in self.zones.values() if owner.is_subdomain(z.origin)]
        if not holding:
            return None
        zone = max(holding, key=lambda z: len(z.origin))
        node = zone.get_node(owner)
        return node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)) if node else None

    def values(self, name: str, rdtype: str) -> set[str]:
        found = self.rdataset(name, rdtype)
        return {r.to_text() for r in found} if found else set()

    def txt(self, name: str | bytes) -> list[bytes]:
        """Each TXT record, its strings concatenated as receivers do."""
        found = self.rdataset(name, "TXT")
        return [b"".join(r.strings) for r in found] if found else []

    def addresses(self, name: str) -> set[str]:
        return self.values(name, "A") | self.values(name, "AAAA")

    def spf_lookup(self, name, qtype, *args, **kwargs):
        """pyspf's DNSLookup, answered from the zones."""
        found = self.rdataset(name, qtype)
        if not found:
            return []
        if qtype in ("A", "AAAA"):
            return [((name, qtype), r.address) for r in found]
        if qtype == "MX":
            return [((name, qtype), (r.preference, r.exchange)) for r in found]
        return [((name, qtype), r.strings) for r in found]

    def dkim_lookup(self, name, timeout=5):
        """dkimpy's dnsfunc, answered from the zones."""
        found = self.txt(name)
        return found[0] if found else None


@pytest.fixture(scope="module")
def texts(stacks, keys) -> dict[str, dict[str, str]]:
    return {name: zone_texts(stack, dkim_public_keys(keys[name])) for name, stack in stacks.items()}


@pytest.fixture(scope="module")
def zones(texts) -> dict[str, Zones]:
    return {name: Zones(t) for name, t in texts.items()}


def test_every_zone_passes_named_checkzone(texts, stack_name, tmp_path):
    for zone, text in texts[stack_name].items():
        path = tmp_path / f"{zone}.zone"
        path.write_text(text)
        # -i local: names in the other zones are checked below against the emitted zones, not
        # through this machine's resolver (no query leaves the test).
        result = subprocess.run(["named-checkzone", "-i", "local", zone, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [line for line in result.stdout.splitlines() if "loaded serial" not in line and line != "OK"]
        assert not lines, f"{zone}: {lines}"


def test_every_mx_and_srv_target_has_addresses_in_the_emitted_zones(zones, stack_name):
    view = zones[stack_name]
    for zone in view.zones.values():
        for owner, _, rdata in zone.iterate_rdatas():
            if rdata.rdtype == dns.rdatatype.MX:
                target = rdata.exchange
            elif rdata.rdtype == dns.rdatatype.SRV and rdata.target != dns.name.root:
                target = rdata.target
            else:
                continue
            assert view.addresses(target.to_text()), f"{owner} -> {target} has no A/AAAA"


def test_each_mail_domain_has_mx_10_to_every_smtp_in_host(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    expected = {f"10 {stack.fqdn(h)}." for h in stack.hosts.smtp_in}
    for domain in stack.domain_names:
        assert view.values(domain, "MX") == expected
        assert view.rdataset(domain, "MX").ttl == stack.dns.mx_ttl


def test_maildrop_name_prefers_the_primary_replica(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    assert view.values(stack.service_name("maildrop"), "MX") == {
        f"10 {stack.fqdn(stack.maildrop_primary)}.",
        f"20 {stack.fqdn(stack.maildrop_backup)}.",
    }
    assert view.addresses(stack.fqdn(stack.maildrop_primary)) == set(stack.maildrop_primary.site_local_addresses)


def test_smtp_in_names_resolve_to_public_addresses_only(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    for host in stack.hosts.smtp_in:
        assert view.addresses(stack.fqdn(host)) == set(host.public_addresses)
    assert view.addresses(stack.service_name("smtp-in")) == {a for h in stack.hosts.smtp_in for a in h.public_addresses}
    for host in stack.hosts.smtp_out:
        assert view.addresses(stack.fqdn(host)) == set(host.site_local_addresses)


def test_client_service_names_point_at_the_frontends(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    frontends = {a for h in stack.hosts.frontend for a in h.public_addresses}
    for name in ("smtp-out", "imap", "webmail"):
        assert view.addresses(stack.service_name(name)) == frontends
    for domain in stack.domain_names:
        assert view.addresses(f"mta-sts.{domain}") == frontends


def _inside(network) -> str:
    net = ip_network(network)
    return str(net.network_address + (1 if net.num_addresses > 1 else 0))


def test_spf_passes_every_egress_prefix_and_softfails_elsewhere(stacks, zones, stack_name, monkeypatch):
    stack, view = stacks[stack_name], zones[stack_name]
    monkeypatch.setattr(spf, "DNSLookup", view.spf_lookup)
    helo = stack.service_name("smtp-out")
    for domain in stack.domain_names:
        for prefix in stack.egress_prefixes:
            result, why = spf.check2(i=_inside(prefix), s=f"alice@{domain}", h=helo)
            assert result == "pass", f"{domain} from {prefix}: {result} {why}"
        for address in OUTSIDE:
            result, why = spf.check2(i=address, s=f"alice@{domain}", h=helo)
            assert result == "softfail", f"{domain} from {address}: {result} {why}"
    # Bounces have an empty MAIL FROM: receivers check smtp-out's HELO name instead.
    assert spf.check2(i=_inside(stack.egress_prefixes[0]), s="", h=helo)[0] == "pass"


def test_dkim_signature_verifies_against_the_published_key(stacks, keys, zones, stack_name):
    view = zones[stack_name]
    for (domain, selector), pem in keys[stack_name].dkim_keys.items():
        message = MESSAGE.replace(b"{domain}", domain.encode())
        signature = dkim.sign(message, selector.encode(), domain.encode(), pem.encode())
        assert dkim.verify(signature + message, dnsfunc=view.dkim_lookup), f"{selector}._domainkey.{domain}"
        tampered = signature + message.replace(b"rotation", b"forged")
        assert not dkim.verify(tampered, dnsfunc=view.dkim_lookup)


def test_dkim_keys_of_other_selectors_do_not_verify(stacks, keys, zones):
    """Each record holds its own key: a signature by one key fails under another selector's record."""
    view, lab_keys = zones["lab"], keys["lab"].dkim_keys
    message = MESSAGE.replace(b"{domain}", b"example.com")
    wrong = dkim.sign(message, b"lab2027", b"example.com", lab_keys[("example.com", "lab2026")].encode())
    assert not dkim.verify(wrong + message, dnsfunc=view.dkim_lookup)


def test_txt_strings_are_at_most_255_bytes(zones, stack_name):
    for zone in zones[stack_name].zones.values():
        for owner, _, rdata in zone.iterate_rdatas(dns.rdatatype.TXT):
            assert all(len(s) <= 255 for s in rdata.strings), owner
    # a 2048-bit key does not fit in one string: it is split, not truncated
    assert any(len(r.strings) > 1 for z in zones[stack_name].zones.values() for _, _, r in z.iterate_rdatas("TXT"))


def test_rotation_publishes_both_selectors_and_signs_with_the_active_one(stacks, keys, zones):
    stack, view = stacks["lab"], zones["lab"]
    domain = next(d for d in stack.domains if len(d.dkim) > 1)
    for key in domain.dkim:
        assert view.txt(f"{key.selector}._domainkey.{domain.name}"), key.selector
    if importlib.util.find_spec("render.smtp_out") is None:
        pytest.skip("render.smtp_out is not written yet: the signing table cannot be checked")
    tree = render_host(stack, "smtp_out", stack.hosts.smtp_out[0], keys["lab"])
    # SigningTable: pattern -> key name; KeyTable: key name -> domain:selector:keyfile.
    signers = [line.split() for line in tree.files["/etc/opendkim/signers"].content.splitlines()]
    keytable = {
        line.split()[0]: line.split()[1].split(":")
        for line in tree.files["/etc/opendkim/keytable"].content.splitlines()
        if line.strip() and not line.startswith("#")
    }
    signing = {
        tuple(keytable[fields[1]][:2]) for fields in signers if len(fields) == 2 and not fields[0].startswith("#")
    }
    active = {(domain.name, k.selector) for k in domain.dkim if k.active}
    assert {pair for pair in signing if pair[0] == domain.name} == active


def test_mta_sts_policy_lists_the_mx_hosts_and_its_id_follows_the_text(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    text = policy(stack)
    assert text.startswith("version: STSv1\n")
    assert f"mode: {stack.dns.mta_sts_mode}\n" in text
    assert f"max_age: {stack.dns.mta_sts_max_age}\n" in text
    mx_lines = {line.removeprefix("mx: ") for line in text.splitlines() if line.startswith("mx: ")}
    for domain in stack.domain_names:
        assert {v.split()[1].rstrip(".") for v in view.values(domain, "MX")} == mx_lines
        assert view.txt(f"_mta-sts.{domain}") == [f"v=STSv1; id={policy_id(stack)}".encode()]
    testing = stack.model_copy(update={"dns": stack.dns.model_copy(update={"mta_sts_mode": "testing"})})
    assert policy(testing) != text
    assert policy_id(testing) != policy_id(stack)
    assert policy_id(stack.model_copy()) == policy_id(stack)


def test_srv_records_announce_submission_and_imaps_only(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    for domain in stack.domain_names:
        assert view.values(f"_submission._tcp.{domain}", "SRV") == {
            f"0 1 {stack.ports.submission} {stack.service_name('smtp-out')}."
        }
        assert view.values(f"_imaps._tcp.{domain}", "SRV") == {f"0 1 {stack.ports.imaps} {stack.service_name('imap')}."}
        for service in ("_imap", "_pop3", "_pop3s", "_submissions"):
            assert view.values(f"{service}._tcp.{domain}", "SRV") == {"0 0 0 ."}, service


def test_dmarc_and_tls_reports_go_to_the_report_address(stacks, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    report = stack.dns.report_address
    report_domain = report.rsplit("@", 1)[1]
    for domain in stack.domain_names:
        (record,) = view.txt(f"_dmarc.{domain}")
        tags = dict(t.strip().split("=", 1) for t in record.decode().split(";"))
        assert tags["v"] == "DMARC1"
        assert tags["p"] == stack.dns.dmarc_policy
        assert tags["rua"] == f"mailto:{report}"
        assert view.txt(f"_smtp._tls.{domain}") == [f"v=TLSRPTv1; rua=mailto:{report}".encode()]
        if domain != report_domain:
            # RFC 7489 7.1: the report domain agrees to take this domain's reports.
            assert view.txt(f"{domain}._report._dmarc.{report_domain}") == [b"v=DMARC1"]


def test_nothing_of_the_webmail_allow_list_is_published(stacks, texts, zones, stack_name):
    stack, view = stacks[stack_name], zones[stack_name]
    for net in stack.webmail.allow:
        for text in texts[stack_name].values():
            assert str(net) not in text
            assert f"{net.network_address}/" not in text
    published = {r.address for z in view.zones.values() for _, _, r in z.iterate_rdatas() if hasattr(r, "address")}
    assert str(stack.webmail.address) not in published


def test_zone_text_is_stable_and_its_serial_follows_the_content(stacks, keys, texts, stack_name):
    stack = stacks[stack_name]
    public = dkim_public_keys(keys[stack_name])
    assert zone_texts(stack, public) == texts[stack_name]
    longer = stack.model_copy(update={"dns": stack.dns.model_copy(update={"mx_ttl": stack.dns.mx_ttl + 1})})
    changed = zone_texts(longer, public)
    serial = lambda text: next(line.split()[6] for line in text.splitlines() if " SOA " in line)  # noqa: E731
    for zone, text in texts[stack_name].items():
        assert serial(changed[zone]) != serial(text), zone


def test_dkim_public_key_may_be_given_as_pem(stacks, keys):
    """Pulumi hands over public_key_pem; the offline render base64 DER: the records are the same."""
    from cryptography.hazmat.primitives import serialization

    stack, material = stacks["lab"], keys["lab"]
    pem = {
        pair: serialization.load_pem_private_key(key.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        for pair, key in material.dkim_keys.items()
    }
    assert records(stack, pem) == records(stack, dkim_public_keys(material))


def test_missing_dkim_key_names_the_selector(stacks, keys):
    stack, public = stacks["lab"], dkim_public_keys(keys["lab"])
    del public[("example.com", "lab2027")]
    with pytest.raises(ValueError, match="lab2027"):
        records(stack, public)


def test_in_zone_nameserver_without_addresses_is_refused(stacks, keys):
    values = stacks["lab"].model_dump(mode="json")
    values["dns"]["nameservers"] = [{"name": "ns1.example.com"}]
    bad = type(stacks["lab"]).model_validate(values)
    with pytest.raises(ValueError, match=r"dns\.nameservers"):
        zone_texts(bad, dkim_public_keys(keys["lab"]))


def test_configured_nameservers_replace_the_stand_in(stacks, keys, tmp_path):
    stack = stacks["lab"]
    values = stack.model_dump(mode="json")
    values["dns"]["nameservers"] = [
        {"name": "ns.lab.example.com", "addresses": ["203.0.113.53"]},
        {"name": "ns1.dns-provider.test"},
    ]
    configured = type(stack).model_validate(values)
    # The lab points the zones at its own server this way, after the stack was used elsewhere.
    copied = stack.model_copy(update={"dns": configured.dns})
    texts = zone_texts(configured, dkim_public_keys(keys["lab"]))
    assert zone_texts(copied, dkim_public_keys(keys["lab"])) == texts
    view = Zones(texts)
    for zone in texts:
        assert view.values(zone, "NS") == {"ns.lab.example.com.", "ns1.dns-provider.test."}
    assert view.addresses("ns.lab.example.com") == {"203.0.113.53"}
    # In none of the emitted zones: no glue to publish, none needed.
    assert view.rdataset("ns1.dns-provider.test", "A") is None
