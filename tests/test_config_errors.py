"""A bad stack config stops the program before it registers anything, with the exact key to fix.

Each case starts from the lab stack, breaks one thing, and runs the Pulumi program under mocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from model import StackConfigError, stack_file_values
from tests.pulumi_program import RecordingMocks, run_program

LAB = stack_file_values("lab")
ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF+FbJYXjXCo1PHtnFVl+shS2+KGY30MiJBkevza4hb8"
RSA_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC1h/npdFGX9PN9aZFT4yibq9IQiMLX3yzA3g/eKjr8kOmoqOOoLNDvR0C5xnNabbt/HOyt"
    "v975yfaVVSAAjtPT9d5HlsP/V5KytWw6Bl8NQeiP5LJ8pLMVD5xSuFbQeJDfmYLVC3FoqARx/OjFReDA4fvQ9tK6KTF+szu8tp3UNw=="
)


def _set(path: str, value) -> Callable[[dict], None]:
    """A mutation: set `path` (dots and [n], as the error keys read) to value; DELETE removes it."""

    def mutate(values: dict) -> None:
        parts = [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]
        target = values
        for part in parts[:-1]:
            target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value

    return mutate


DELETE = object()


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(values: dict) -> None:
        for m in mutations:
            m(values)

    return mutate


# (case, mutation, the key the error must name)
CASES = [
    ("host name used twice", _set("relay_clients[0].name", "smtp-in-frggh0"), "relay_clients[0].name"),
    ("webmail host named like a vm", _set("webmail.host", "nginx0-chrma0"), "webmail.host"),
    ("host on an unknown site", _set("hosts.maildrop[1].site", "nowhere"), "hosts.maildrop[1].site"),
    ("host not named <label>-<site>", _set("hosts.smtp_out[0].name", "smtpout"), "hosts.smtp_out[0].name"),
    ("ipv4 outside its site prefix", _set("hosts.smtp_in[0].ipv4", "192.0.2.200"), "hosts.smtp_in[0].ipv4"),
    ("ipv6 outside its site prefix", _set("hosts.frontend[2].ipv6", "2001:db8:0:10::99"), "hosts.frontend[2].ipv6"),
    ("ipv4 is the site's router", _set("hosts.smtp_out[1].ipv4", "192.0.2.33"), "hosts.smtp_out[1].ipv4"),
    ("address used by two hosts", _set("hosts.frontend[1].ipv4", "192.0.2.40"), "hosts.frontend[1].ipv4"),
    (
        "public address outside the site's public prefixes",
        _set("hosts.frontend[0].public_ipv4", "198.51.100.200"),
        "hosts.frontend[0].public_ipv4",
    ),
    ("not an ip address", _set("hosts.smtp_in[2].ipv6", "not-an-address"), "hosts.smtp_in[2].ipv6"),
    ("no primary maildrop", _set("hosts.maildrop[0].primary", False), "hosts.maildrop"),
    ("two primary maildrops", _set("hosts.maildrop[1].primary", True), "hosts.maildrop"),
    ("three maildrops", lambda v: v["hosts"]["maildrop"].append(dict(v["hosts"]["maildrop"][1])), "hosts.maildrop"),
    ("two primary smtp-out", _set("hosts.smtp_out[2].primary", True), "hosts.smtp_out"),
    (
        "two hosts of a role on one site",
        _both(
            _set("hosts.smtp_out[1].site", "chrma0"),
            _set("hosts.smtp_out[1].name", "smtp-out2-chrma0"),
            _set("hosts.smtp_out[1].ipv4", "192.0.2.17"),
            _set("hosts.smtp_out[1].ipv6", "2001:db8:0:10::17"),
        ),
        "hosts.smtp_out",
    ),
    (
        "smtp-in without a public address",
        _both(_set("hosts.smtp_in[1].public_ipv4", DELETE), _set("hosts.smtp_in[1].public_ipv6", DELETE)),
        "hosts.smtp_in[1]",
    ),
    (
        "maildrop with a public address",
        _both(
            _set("hosts.maildrop[0].site", "chrma0"),
            _set("hosts.maildrop[0].name", "maildrop0-chrma0"),
            _set("hosts.maildrop[0].ipv4", "192.0.2.10"),
            _set("hosts.maildrop[0].ipv6", "2001:db8:0:10::10"),
            _set("hosts.maildrop[0].public_ipv4", "198.51.100.10"),
        ),
        "hosts.maildrop[0]",
    ),
    ("alias that is not an address", _set("domains[0].aliases.ali ce", ["alice"]), "domains[0].aliases.ali ce"),
    (
        "alias target in a local domain without that mailbox",
        _set("domains[1].aliases.alice", ["nobody@example.com"]),
        "domains[1].aliases.alice",
    ),
    ("alias to an unknown mailbox", _set("domains[0].aliases.team", ["alice", "dave"]), "domains[0].aliases.team"),
    ("alias target not an address", _set("domains[0].aliases.carol", ["carol@remote"]), "domains[0].aliases.carol"),
    ("alias without targets", _set("domains[0].aliases.team", []), "domains[0].aliases.team"),
    (
        "/dev/null beside other targets",
        _set("domains[0].aliases.noreply", ["/dev/null", "alice"]),
        "domains[0].aliases.noreply",
    ),
    (
        "dkim selector twice",
        _set("domains[1].dkim", [{"selector": "lab"}, {"selector": "lab", "active": False}]),
        "domains[1].dkim[1].selector",
    ),
    ("no active dkim selector", _set("domains[2].dkim", [{"selector": "lab", "active": False}]), "domains[2].dkim"),
    ("two active dkim selectors", _set("domains[0].dkim[1].active", True), "domains[0].dkim"),
    ("dkim selector not a label", _set("domains[0].dkim[0].selector", "lab_2026"), "domains[0].dkim[0].selector"),
    ("domain not a dns name", _set("domains[2].name", "example_org"), "domains[2].name"),
    ("domain listed twice", _set("domains[2].name", "example.net"), "domains[2].name"),
    ("maildrop name as a mail domain", _set("domains[2].name", "maildrop.example.com"), "domains[2].name"),
    ("port out of range", _set("ports", {"submission": 70000}), "ports.submission"),
    ("port clash on maildrop", _set("ports", {"imaps": 4190}), "ports.imaps"),
    ("webmail on the frontends' port", _set("webmail.port", 443), "webmail.port"),
    ("unknown config key (typo)", _set("mailbox", [{"name": "carol"}]), "mailbox"),
    ("unknown nested key (typo)", _set("hosts.smtp_in[0].public_ip4", "198.51.100.8"), "hosts.smtp_in[0].public_ip4"),
    ("missing required key", _set("mailboxes", DELETE), "mailboxes"),
    ("no mailboxes", _set("mailboxes", []), "mailboxes"),
    ("mailbox listed twice", _set("mailboxes[1].name", "alice"), "mailboxes[1].name"),
    (
        "mailbox named like a service user",
        _set("mailboxes", [{"name": "alice"}, {"name": "bob"}, {"name": "cron"}]),
        "mailboxes[2].name",
    ),
    ("password_hash in plain text", _set("mailboxes[0].password_hash", "hunter2"), "mailboxes[0].password_hash"),
    ("bad hypervisor uri", _set("sites[0].hypervisor", "http://hv.example.com/"), "sites[0].hypervisor"),
    (
        "two sites on one hypervisor",
        _set("sites[1].hypervisor", "qemu+ssh://lab@hv.chrma0.example.com/system"),
        "sites[1].hypervisor",
    ),
    ("site listed twice", _set("sites[4].name", "chbtl0"), "sites[4].name"),
    ("bad prefix", _set("sites[1].site_local.ipv4", "192.0.2.33/27"), "sites[1].site_local.ipv4"),
    ("bad country", _set("sites[2].country", "Netherlands"), "sites[2].country"),
    ("bad bridge name", _set("sites[0].bridge", "a bridge with spaces"), "sites[0].bridge"),
    (
        "relay client sending from a foreign domain",
        _set("relay_clients[0].mail_from", "cron@elsewhere.test"),
        "relay_clients[0].mail_from",
    ),
    ("relay client mail_from not an address", _set("relay_clients[0].mail_from", "cron"), "relay_clients[0].mail_from"),
    ("webmail allow empty", _set("webmail.allow", []), "webmail.allow"),
    ("webmail allow not a network", _set("webmail.allow", ["10.0.0.1/8"]), "webmail.allow[0]"),
    ("webmail on a vm's address", _set("webmail.address", "192.0.2.8"), "webmail.address"),
    ("infra domain not a dns name", _set("infra_domain", "example..com"), "infra_domain"),
    ("ssh key not a public key", _set("ssh_public_key", "hunter2"), "ssh_public_key"),
    ("egress prefixes empty", _set("egress_prefixes", []), "egress_prefixes"),
    ("dnsbl reply that could block on errors", _set("dnsbls[0].reply", "127.0.0.*"), "dnsbls[0].reply"),
    ("vm memory too small", _set("vm_memory_mib", 256), "vm_memory_mib"),
    ("managesieve allow not a network", _set("managesieve_allow", ["everyone"]), "managesieve_allow[0]"),
    # Hosts the program does not create name the SSH host key their push pins.
    ("relay client host key not a key", _set("relay_clients[0].host_key", "hunter2"), "relay_clients[0].host_key"),
    (
        "relay client host key with a broken body",
        _set("relay_clients[0].host_key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIbroken"),
        "relay_clients[0].host_key",
    ),
    ("relay client without a host key", _set("relay_clients[0].host_key", DELETE), "relay_clients[0].host_key"),
    ("webmail without a host key", _set("webmail.host_key", DELETE), "webmail.host_key"),
    (
        "webmail host key is a private key",
        _set("webmail.host_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        "webmail.host_key",
    ),
    ("webmail host key RSA (SHA-1 only in the provider)", _set("webmail.host_key", RSA_KEY), "webmail.host_key"),
    ("bastion without a host key", _set("bastion", {"host": "bastion.example.com"}), "bastion.host_key"),
    (
        "bastion host key not a key",
        _set("bastion", {"host": "192.0.2.1", "host_key": "ssh-ed25519"}),
        "bastion.host_key",
    ),
    ("bastion host not an address or name", _set("bastion", {"host": "a b", "host_key": ED25519_KEY}), "bastion.host"),
    (
        "frontend without a public address",
        _both(_set("hosts.frontend[1].public_ipv4", DELETE), _set("hosts.frontend[1].public_ipv6", DELETE)),
        "hosts.frontend[1]",
    ),
    ("smtp-out with a public address", _set("hosts.smtp_out[0].public_ipv4", "198.51.100.7"), "hosts.smtp_out[0]"),
    ("two primary frontends", _set("hosts.frontend[1].primary", True), "hosts.frontend"),
    (
        "alias to an unknown mailbox of the maildrop domain",
        _set("domains[0].aliases.team", ["alice", "dave@maildrop.example.com"]),
        "domains[0].aliases.team",
    ),
    ("domain without postmaster", _set("domains[2].aliases.postmaster", DELETE), "domains[2].aliases"),
    ("nameserver not a dns name", _set("dns.nameservers", [{"name": "ns1 .example.com"}]), "dns.nameservers[0].name"),
]

# Values that would otherwise reach a daemon's file as configuration of their own:
# (case, mutation, the key, what the error must say was expected).
INJECTIONS = [
    (
        "report address is a pipe",
        _set("dns.report_address", "|/bin/sh -c 'id >/tmp/x'"),
        "dns.report_address",
        "a mail address",
    ),
    ("report address is a file", _set("dns.report_address", "/var/mail/all"), "dns.report_address", "a mail address"),
    (
        "report address with a trailing newline",
        _set("dns.report_address", "postmaster@example.com\n"),
        "dns.report_address",
        "a mail address",
    ),
    (
        "report address that is a pipe in a domain",
        _set("dns.report_address", "|id@example.com"),
        "dns.report_address",
        "a mail address",
    ),
    (
        "webmail redirect with nginx directives",
        _set("webmail.redirect", "https://www.example.com/; return 200 hi"),
        "webmail.redirect",
        "an https URL",
    ),
    (
        "webmail redirect opening a block",
        _set("webmail.redirect", "https://x.example.com/{"),
        "webmail.redirect",
        "https URL",
    ),
    (
        "webmail redirect with a variable",
        _set("webmail.redirect", "https://x.example.com/$host"),
        "webmail.redirect",
        "https",
    ),
    (
        "webmail redirect in clear text",
        _set("webmail.redirect", "http://www.example.com/"),
        "webmail.redirect",
        "https URL",
    ),
    (
        "webmail redirect with a newline",
        _set("webmail.redirect", "https://www.example.com/\n"),
        "webmail.redirect",
        "https",
    ),
    (
        "webmail image adding compose keys",
        _set("webmail.image", 'roundcube/roundcubemail:latest"\n    privileged: true\n    x: "'),
        "webmail.image",
        "an OCI image reference",
    ),
    (
        "webmail image with a space",
        _set("webmail.image", "roundcube/roundcubemail latest"),
        "webmail.image",
        "OCI image",
    ),
    ("webmail image in upper case", _set("webmail.image", "Roundcube/RoundcubeMail"), "webmail.image", "OCI image"),
    ("egress prefix as a number", _set("egress_prefixes", [12345]), "egress_prefixes[0]", "not a network"),
    ("host address as a number", _set("hosts.smtp_in[0].ipv4", 3221225992), "hosts.smtp_in[0].ipv4", "IPv4 address"),
    ("webmail allow as a number", _set("webmail.allow", [203]), "webmail.allow[0]", "not a network"),
    ("site-local prefix as a number", _set("sites[0].site_local.ipv4", 3221225472), "sites[0].site_local.ipv4", "IPv4"),
    (
        "alias target with a trailing newline",
        _set("domains[0].aliases.team", ["alice", "bob@example.org\n"]),
        "domains[0].aliases.team",
        "is not an address",
    ),
    (
        "alias target that is a pipe",
        _set("domains[0].aliases.team", ["|/bin/sh"]),
        "domains[0].aliases.team",
        "neither",
    ),
    (
        "relay mail_from with a trailing newline",
        _set("relay_clients[0].mail_from", "cron@example.com\n"),
        "relay_clients[0].mail_from",
        "a mail address",
    ),
    (
        "password hash carrying a second user",
        _set("mailboxes[0].password_hash", "{CRYPT}$2y$05$abc::::\nroot:{CRYPT}x"),
        "mailboxes[0].password_hash",
        "not a password hash",
    ),
    (
        "ssh key carrying a second line",
        _set("ssh_public_key", "ssh-ed25519 AAAAC3Nz lab@example.com\nruncmd: [id]"),
        "ssh_public_key",
        "an SSH public key on one line",
    ),
    ("domain name that is not one", _set("domains[2].name", "example_org"), "domains[2].name", "not a domain name"),
    ("host name that is not a label", _set("hosts.smtp_in[0].name", "Smtp In"), "hosts.smtp_in[0].name", "a DNS label"),
    ("country not a code", _set("sites[2].country", "Netherlands"), "sites[2].country", "a two-letter country code"),
    ("hypervisor not a libvirt uri", _set("sites[0].hypervisor", "http://hv/"), "sites[0].hypervisor", "a libvirt URI"),
    ("dnsbl reply not an answer", _set("dnsbls[0].reply", "127.0.0.*"), "dnsbls[0].reply", "a DNSBL listing answer"),
    (
        "image url carrying shell",
        _set("debian_image.url", "/var/lib/x-20261110-2350.qcow2$(id)"),
        "debian_image.url",
        "an https URL or absolute path of a .qcow2 image",
    ),
    (
        "site resolver as a number",
        _set("sites[0].resolvers", [167772161]),
        "sites[0].resolvers[0]",
        "not an IP address",
    ),
    (
        "bastion user carrying a command",
        _set("bastion", {"host": "192.0.2.1", "user": "root;id", "host_key": ED25519_KEY}),
        "bastion.user",
        "a unix user name",
    ),
    ("relay group as a number", _set("relay_clients[0].group", 7), "relay_clients[0].group", "valid string"),
]


def _refused(mutate: Callable[[dict], None]) -> str:
    """The error of the lab stack with one mutation, checking that no resource was registered."""
    values = copy.deepcopy(LAB)
    mutate(values)
    mocks = RecordingMocks()
    with pytest.raises(StackConfigError) as err:
        run_program("lab", values, mocks=mocks)
    assert mocks.resources == [], "resources registered before the config was refused"
    return str(err.value)


@pytest.mark.parametrize(("mutate", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_stops_the_program_naming_the_key(mutate, key):
    text = _refused(mutate)
    assert f"mail-cluster:{key}: " in text, text


@pytest.mark.parametrize(("mutate", "key", "expected"), [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_a_value_that_would_inject_configuration_is_refused_saying_what_was_expected(mutate, key, expected):
    text = _refused(mutate)
    line = next((ln for ln in text.splitlines() if f"mail-cluster:{key}: " in ln), None)
    assert line is not None, text
    assert expected in line, line
    assert "pattern" not in line and "[a-z" not in line, f"the error shows a pattern, not what was expected: {line}"


def test_the_cases_are_many_and_distinct():
    assert len(CASES) >= 30
    names = [c[0] for c in CASES + INJECTIONS]
    assert len(set(names)) == len(names)
