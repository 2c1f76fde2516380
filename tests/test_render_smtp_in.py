"""smtp-in as its daemons read it: Postfix (postconf, postmap -q on the rendered tables), PostSRSd's
settings as its launcher's shell reads them, rspamd (rspamadm configdump) and the checkers."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_checks_pass, check_with_content, role_trees
from postfix_tools import postconf, settings, stage

from render import render_host
from render.maildrop import rspamd_controller_password
from render.names import tls_key_path
from render.smtp_in import DISCARD_ADDRESS, SRS_SECRET

POSTSRSD = "/etc/default/postsrsd"
CONTROLLER = "/etc/rspamd/local.d/worker-controller.inc"


@pytest.fixture(scope="module")
def staged(trees, stack_name, tmp_path_factory) -> Path:
    """The first smtp-in of the stack, written to a directory."""
    tree = role_trees(trees[stack_name], "smtp_in")[0]
    return stage(tree, tmp_path_factory.mktemp(f"{stack_name}-{tree.host}"))


def lookup(root: Path, table: str, key: str) -> str | None:
    """`postmap -q key hash:/etc/postfix/<table>` on the staged table; None when not found."""
    argv = ["postmap", "-c", root / "etc/postfix", "-q", key, f"hash:{root}/etc/postfix/{table}"]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode in (0, 1) and not result.stderr, result.stderr
    return result.stdout.strip() if result.returncode == 0 else None


# ---- the daemons' own checkers ---------------------------------------------------------------


@pytest.mark.checkers
def test_every_smtp_in_passes_postfix_postmap_rspamd_and_unbound_checks(trees, stack_name):
    hosts = role_trees(trees[stack_name], "smtp_in")
    assert len(hosts) == 3
    for tree in hosts:
        assert {c.argv[0] for c in tree.checks} >= {"postfix", "rspamadm", "unbound-checkconf"}
        assert {p for p, s in tree.files.items() if s.postmap} >= {
            "/etc/postfix/virtual",
            "/etc/postfix/virtual-domains",
        }
    with ThreadPoolExecutor() as pool:
        list(pool.map(assert_checks_pass, hosts))


@pytest.mark.checkers
@pytest.mark.parametrize(
    ("path", "breakage", "message"),
    [
        ("/etc/postfix/virtual", "pim@example.com\n", "postmap /etc/postfix/virtual"),
        ("/etc/rspamd/local.d/actions.conf", "reject = 15;\ngreylist = {\n", "rspamadm configtest"),
        (POSTSRSD, 'SRS_DOMAIN="example.com\n', "postsrsd settings"),
    ],
)
def test_a_broken_smtp_in_file_is_refused_by_its_checker(trees, path, breakage, message):
    tree = role_trees(trees["lab"], "smtp_in")[0]
    result = check_with_content(tree, path, breakage)
    assert result.returncode == 1
    assert f"check '{message}' failed" in result.stderr


# ---- Postfix: 25 and 465, no SASL -----------------------------------------------------------


def test_smtp_in_listens_on_smtp_and_smtps_only(staged, stacks, stack_name):
    listeners = [line.split()[0] for line in postconf(staged, "-M").splitlines() if line.split()[1] == "inet"]
    assert listeners == ["smtp", "smtps"]
    assert (stacks[stack_name].ports.smtp, stacks[stack_name].ports.smtps) == (25, 465)


def test_smtp_in_offers_no_sasl_and_smtps_speaks_tls_at_once(staged):
    assert postconf(staged, "-P", "smtp/inet/smtpd_sasl_auth_enable") == "smtp/inet/smtpd_sasl_auth_enable = no"
    assert postconf(staged, "-P", "smtps/inet/smtpd_sasl_auth_enable") == "smtps/inet/smtpd_sasl_auth_enable = no"
    assert postconf(staged, "-P", "smtps/inet/smtpd_tls_wrappermode") == "smtps/inet/smtpd_tls_wrappermode = yes"
    assert settings(staged, "smtpd_sasl_auth_enable") == {"smtpd_sasl_auth_enable": "no"}


def test_smtps_requires_tls_1_2_and_port_25_stays_opportunistic_without_anonymous_suites(staged):
    # 465 is TLS-only: the mandatory policy (TLS 1.2+, strong suites) applies there.
    assert (
        postconf(staged, "-P", "smtps/inet/smtpd_tls_security_level") == "smtps/inet/smtpd_tls_security_level = encrypt"
    )
    values = settings(
        staged,
        "smtpd_tls_mandatory_protocols",
        "smtpd_tls_mandatory_ciphers",
        "smtpd_tls_exclude_ciphers",
        "smtpd_tls_security_level",
        "disable_vrfy_command",
    )
    assert values["smtpd_tls_mandatory_protocols"] == ">=TLSv1.2"
    assert values["smtpd_tls_mandatory_ciphers"] == "high"
    # 25: opportunistic (the default level, may) for every MTA, but never anonymous or NULL suites.
    assert values["smtpd_tls_security_level"] in ("", "may")
    assert {"aNULL", "eNULL"} <= {c.strip() for c in values["smtpd_tls_exclude_ciphers"].split(",")}
    assert values["disable_vrfy_command"] == "yes"


def test_smtp_in_main_cf_has_the_case_study_values(staged, stacks, stack_name):
    stack = stacks[stack_name]
    host = stack.hosts.smtp_in[0]
    expected = {
        "myhostname": f"smtp-in.{stack.infra_domain}",
        "smtpd_banner": f"$myhostname ESMTP $mail_name ({stack.fqdn(host)})",
        "mynetworks": "127.0.0.0/8, [::1]/128",
        "compatibility_level": "3.6",
        "smtpd_tls_cert_file": f"/etc/certs/{stack.infra_domain}/fullchain.pem",
        "smtpd_milters": f"inet:localhost:{stack.ports.rspamd_milter}",
        "milter_default_action": "accept",
        "sender_canonical_maps": f"tcp:localhost:{stack.ports.srs_forward}",
        "sender_canonical_classes": "envelope_sender",
        "recipient_canonical_maps": f"tcp:localhost:{stack.ports.srs_reverse}",
        "recipient_canonical_classes": "envelope_recipient,header_recipient",
        "virtual_alias_domains": "hash:/etc/postfix/virtual-domains",
        "virtual_alias_maps": "hash:/etc/postfix/virtual",
    }
    assert settings(staged, *expected) == expected


# ---- DNSBLs and relaying --------------------------------------------------------------------


def reply_matches(pattern: str, address: str) -> bool:
    """Postfix's reject_rbl_client reply filter: `127.0.0.2` or `127.0.0.[2..11]` per octet."""
    for part, octet in zip(re.findall(r"\[\d+\.\.\d+\]|\d+", pattern), address.split("."), strict=True):
        if m := re.fullmatch(r"\[(\d+)\.\.(\d+)\]", part):
            if not int(m[1]) <= int(octet) <= int(m[2]):
                return False
        elif part != octet:
            return False
    return True


def test_every_dnsbl_rejects_only_on_its_listing_codes(staged, stacks, stack_name):
    restrictions = [r.strip() for r in postconf(staged, "-h", "smtpd_recipient_restrictions").split(",")]
    rbls = [r.removeprefix("reject_rbl_client ") for r in restrictions if r.startswith("reject_rbl_client")]
    assert [r.split("=")[0] for r in rbls] == [d.zone for d in stacks[stack_name].dnsbls]
    for rbl in rbls:
        zone, _, reply = rbl.partition("=")
        assert reply, f"{zone} rejects on any answer"
        # The DNSBLs' error answers ("query refused", "typo'd zone") must never reject mail.
        for error in ("127.255.255.254", "127.255.255.255", "127.255.255.252", "127.0.0.1"):
            assert not reply_matches(reply, error), f"{zone}={reply} rejects on {error}"
        assert reply_matches(reply, "127.0.0.2")


def test_smtp_in_relays_for_its_own_domains_only(staged, stacks, stack_name):
    stack = stacks[stack_name]
    restrictions = [r.strip() for r in postconf(staged, "-h", "smtpd_recipient_restrictions").split(",")]
    assert restrictions[0] == "permit_mynetworks" and restrictions[-1] == "reject_unauth_destination"
    assert settings(staged, "-x", "relay_domains", "mynetworks") == {
        "relay_domains": "",
        "mynetworks": "127.0.0.0/8, [::1]/128",
    }
    for domain in stack.domain_names:
        assert lookup(staged, "virtual-domains", domain) is not None
    # The maildrops' name is a next hop reached by MX, never a destination others may send to.
    maildrop = stack.service_name("maildrop")
    assert lookup(staged, "virtual-domains", maildrop) is None
    assert maildrop not in postconf(staged, "-h", "mydestination")
    assert lookup(staged, "virtual-domains", "example.invalid") is None


def test_the_hop_to_the_maildrops_keeps_its_tls_connections(staged, stacks, stack_name):
    # One TLS handshake per connection, not per message: the cache is on for the maildrops' name
    # and TLS connections go through tlsproxy, which master.cf must run.
    assert settings(staged, "-x", "smtp_connection_cache_destinations", "smtp_tls_connection_reuse") == {
        "smtp_connection_cache_destinations": stacks[stack_name].service_name("maildrop"),
        "smtp_tls_connection_reuse": "yes",
    }
    assert postconf(staged, "-M", "tlsproxy/unix").split()[-1] == "tlsproxy"


# ---- virtual aliases ------------------------------------------------------------------------

# (alias, what virtual_alias_maps gives) per stack: mailbox -> maildrop name, addresses kept,
# several targets comma separated, /dev/null -> the discard address.
ALIASES = {
    "prod": [
        ("pim@ipng.ch", "pim@maildrop.ipng.ch"),
        ("hostmaster@ipng.ch", "pim@maildrop.ipng.ch, arend@example.net"),
        ("pim@ipng.nl", "pim@ipng.ch"),
        ("jelle@ublog.tech", "jelle@example.org"),
        ("noreply@ipng.ch", DISCARD_ADDRESS),
        ("nobody@ipng.ch", DISCARD_ADDRESS),
        ("noreply@ublog.tech", DISCARD_ADDRESS),
        ("unknown@ipng.ch", None),
    ],
    "lab": [
        ("alice@example.com", "alice@maildrop.example.com"),
        ("team@example.com", "alice@maildrop.example.com, bob@maildrop.example.com"),
        ("carol@example.com", "carol@remote.test"),
        ("alice@example.net", "alice@example.com"),
        ("bob@example.org", "bob@maildrop.example.com"),
        ("noreply@example.com", DISCARD_ADDRESS),
        ("unknown@example.com", None),
    ],
}


def test_virtual_aliases_resolve_as_the_case_study_shows(staged, stack_name):
    for alias, expected in ALIASES[stack_name]:
        assert lookup(staged, "virtual", alias) == expected, alias


def test_dev_null_aliases_are_accepted_then_discarded(staged, stack_name):
    assert postconf(staged, "-h", "transport_maps") == "hash:/etc/postfix/transport"
    assert lookup(staged, "transport", DISCARD_ADDRESS).startswith("discard:")
    # The discard address itself is no alias: nobody can send to it from outside.
    assert lookup(staged, "virtual", DISCARD_ADDRESS) is None
    assert lookup(staged, "virtual-domains", DISCARD_ADDRESS.partition("@")[2]) is None


def test_alias_tables_change_without_a_postfix_reload(trees, stack_name):
    """Postfix notices a rebuilt .db by itself: an alias change reloads nothing."""
    for tree in role_trees(trees[stack_name], "smtp_in"):
        for table in ("/etc/postfix/virtual", "/etc/postfix/virtual-domains", "/etc/postfix/transport"):
            assert tree.files[table].postmap and tree.files[table].reload == ()
        assert tree.files["/etc/postfix/main.cf"].reload == ("postfix",)
        for path, spec in tree.files.items():
            assert set(spec.reload) <= set(tree.services), path


def test_every_smtp_in_gets_the_tables_rendered_once_for_the_stack(trees, stack_name):
    """A hosting provider's tables run to thousands of lines: rendered once, not once per host."""
    first, *others = role_trees(trees[stack_name], "smtp_in")
    assert others
    for tree in others:
        for table in ("/etc/postfix/virtual", "/etc/postfix/virtual-domains", "/etc/postfix/transport"):
            assert tree.files[table] is first.files[table], table


def test_a_copy_of_the_stack_with_other_aliases_renders_its_own_tables(stacks, keys, stack_name):
    """The tables kept with a stack are not reused by a copy of it with other values."""
    stack = stacks[stack_name]
    host = stack.hosts.smtp_in[0]
    before = render_host(stack, "smtp_in", host, keys[stack_name]).files["/etc/postfix/virtual"].content
    first = stack.domains[0]
    added = first.model_copy(update={"aliases": {**first.aliases, "newcomer": [stack.mailbox_names[0]]}})
    grown = stack.model_copy(update={"domains": [added, *stack.domains[1:]]})
    after = render_host(grown, "smtp_in", host, keys[stack_name]).files["/etc/postfix/virtual"].content
    assert f"newcomer@{first.name} " in after and f"newcomer@{first.name} " not in before
    assert render_host(stack, "smtp_in", host, keys[stack_name]).files["/etc/postfix/virtual"].content == before


# ---- PostSRSd -------------------------------------------------------------------------------


def test_postsrsd_rewrites_into_the_infra_domain_on_the_ports_postfix_asks(staged, stacks, stack_name):
    stack = stacks[stack_name]
    names = ("SRS_DOMAIN", "SRS_EXCLUDE_DOMAINS", "SRS_SECRET", "SRS_FORWARD_PORT", "SRS_REVERSE_PORT")
    # Read as Debian's postsrsd-systemd-launcher reads it: sourced by sh.
    script = f". {staged}{POSTSRSD}; " + "; ".join(f'echo "${n}"' for n in names)
    values = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert dict(zip(names, values, strict=True)) == {
        "SRS_DOMAIN": stack.infra_domain,
        # The own domains keep their senders (SRS_DOMAIN never is rewritten).
        "SRS_EXCLUDE_DOMAINS": ",".join(d for d in stack.domain_names if d != stack.infra_domain),
        "SRS_SECRET": SRS_SECRET,
        "SRS_FORWARD_PORT": str(stack.ports.srs_forward),
        "SRS_REVERSE_PORT": str(stack.ports.srs_reverse),
    }


def test_every_smtp_in_shares_one_srs_secret(trees, keys, stack_name):
    secrets = {t.host: t.files[SRS_SECRET] for t in role_trees(trees[stack_name], "smtp_in")}
    assert len(secrets) == 3
    assert {s.content for s in secrets.values()} == {keys[stack_name].srs_secret + "\n"}
    assert {(s.mode, s.owner, s.group) for s in secrets.values()} == {(0o600, "root", "root")}
    assert {s.reload for s in secrets.values()} == {("postsrsd",)}


# ---- rspamd ---------------------------------------------------------------------------------


def rspamd_config(staged: Path, section: str) -> str:
    """A section as rspamd reads Debian's rspamd.conf with the staged local.d."""
    argv = ["rspamadm", f"--var=LOCAL_CONFDIR={staged}/etc/rspamd", "configdump", section]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_rspamd_greylists_tags_and_rejects(staged):
    actions = rspamd_config(staged, "actions")
    assert {"greylist = 4;", "add_header = 6;", "reject = 15;"} <= {line.strip() for line in actions.splitlines()}


def test_rspamd_sends_nothing_out_and_resolves_locally(staged):
    options = rspamd_config(staged, "options")
    assert re.search(r'nameserver \[\s*"127\.0\.0\.1:53",\s*"\[::1\]:53",?\s*\]', options), options
    for module in ("fuzzy_check", "url_redirector", "external_services"):
        assert "enabled = false;" in rspamd_config(staged, module), module


def test_the_maildrops_can_teach_rspamd_with_their_password(trees, keys, stacks, stack_name):
    stack = stacks[stack_name]
    for tree in role_trees(trees[stack_name], "smtp_in"):
        host = next(h for h in stack.hosts.smtp_in if h.name == tree.host)
        spec = tree.files[CONTROLLER]
        assert (spec.mode, spec.owner, spec.group) == (0o640, "root", "_rspamd")
        assert f'password = "{rspamd_controller_password(keys[stack_name])}";' in spec.content
        assert f'bind_socket = "[{host.ipv6}]:{stack.ports.rspamd_controller}";' in spec.content


# ---- secrets --------------------------------------------------------------------------------


def test_smtp_in_tls_key_is_root_only(trees, stacks, stack_name):
    for tree in role_trees(trees[stack_name], "smtp_in"):
        key = tree.files[tls_key_path(stacks[stack_name])]
        assert (key.mode, key.owner, key.group) == (0o600, "root", "root")
