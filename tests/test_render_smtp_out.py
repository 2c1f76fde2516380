"""smtp-out as its daemons read it: Postfix (postconf), Dovecot (doveconf, doveadm pw), OpenDKIM
(its own test mode signs a message with the rendered tables), rspamd and unbound (their checkers)."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import assert_checks_pass, check_with_content, role_trees
from postfix_tools import postconf, settings, stage

from render import tls
from render.names import tls_key_path
from render.smtp_out import KEY_TABLE, SASL_USERS, SENDER_LOGINS, SIGNING_TABLE, dkim_key_path

OPENDKIM_CONF = "/etc/opendkim.conf"


@pytest.fixture(scope="module")
def staged(trees, stack_name, tmp_path_factory) -> Path:
    """The first smtp-out of the stack, written to a directory."""
    tree = role_trees(trees[stack_name], "smtp_out")[0]
    return stage(tree, tmp_path_factory.mktemp(f"{stack_name}-{tree.host}"))


# ---- the daemons' own checkers ---------------------------------------------------------------


@pytest.mark.checkers
def test_every_smtp_out_passes_postfix_doveconf_opendkim_rspamd_and_unbound_checks(trees, stack_name):
    hosts = role_trees(trees[stack_name], "smtp_out")
    assert len(hosts) == 3
    for tree in hosts:
        assert {c.argv[0] for c in tree.checks} >= {"postfix", "doveconf", "opendkim", "rspamadm", "unbound-checkconf"}
    # The replicas are checked side by side: each push copies /etc into its own namespace.
    with ThreadPoolExecutor() as pool:
        list(pool.map(assert_checks_pass, hosts))


@pytest.mark.checkers
@pytest.mark.parametrize(
    ("path", "breakage", "message"),
    [
        # A misspelt -o option: Postfix only warns ("unused parameter"), the push refuses.
        (
            "/etc/postfix/master.cf",
            "submission inet n - y - - smtpd\n  -o smtpd_tls_security_levle=encrypt\n",
            "postfix check",
        ),
        (OPENDKIM_CONF, "Mode sv\nCanonicalization sideways\n", "opendkim -n"),
        ("/etc/dovecot/dovecot.conf", "protocols = none\nservice auth {\n", "doveconf"),
        (
            "/etc/unbound/unbound.conf",
            "server:\n    interface: 127.0.0.1\n    prefetch: sometimes\n",
            "unbound-checkconf",
        ),
    ],
)
def test_a_broken_smtp_out_file_is_refused_by_its_checker(trees, path, breakage, message):
    tree = role_trees(trees["lab"], "smtp_out")[0]
    result = check_with_content(tree, path, breakage)
    assert result.returncode == 1
    assert f"check '{message}' failed" in result.stderr


# ---- Postfix: submission only, the case study's main.cf -------------------------------------


def test_smtp_out_listens_for_submission_only(staged, stacks, stack_name):
    listeners = [line.split()[0] for line in postconf(staged, "-M").splitlines() if line.split()[1] == "inet"]
    assert listeners == ["submission"]
    assert stacks[stack_name].ports.submission == 587


def test_submission_requires_starttls_and_sasl(staged):
    service = "submission/inet"
    expected = {
        "syslog_name": "postfix/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_reject_unlisted_recipient": "no",
        "smtpd_client_restrictions": "permit_sasl_authenticated,permit_mynetworks,reject",
        "milter_macro_daemon_name": "ORIGINATING",
    }
    for name, value in expected.items():
        assert postconf(staged, "-P", f"{service}/{name}") == f"{service}/{name} = {value}"


def test_smtp_out_main_cf_has_the_case_study_values(staged, stacks, stack_name):
    stack = stacks[stack_name]
    host = stack.hosts.smtp_out[0]
    certs = f"/etc/certs/{stack.infra_domain}"
    expected = {
        "myhostname": f"smtp-out.{stack.infra_domain}",
        "mydestination": f"$myhostname, {stack.fqdn(host)}, localhost.{host.site}.{stack.infra_domain}, localhost",
        "mynetworks": "127.0.0.0/8, [::1]/128",
        "compatibility_level": "3.6",
        "smtpd_banner": f"$myhostname ESMTP $mail_name ({stack.fqdn(host)})",
        "smtpd_relay_restrictions": "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
        "smtpd_tls_cert_file": f"{certs}/fullchain.pem",
        "smtpd_tls_key_file": f"{certs}/privkey.pem",
        "smtpd_tls_auth_only": "yes",
        "smtpd_client_connection_count_limit": "4",
        "smtpd_client_connection_rate_limit": "10",
        "smtpd_client_message_rate_limit": "60",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": "private/auth",
        "smtpd_sasl_security_options": "noanonymous, noplaintext",
        "smtpd_sasl_tls_security_options": "noanonymous",
        "smtp_tls_cert_file": f"{certs}/fullchain.pem",
        "smtp_tls_mandatory_ciphers": "medium",
        "smtp_tls_security_level": "encrypt",
        "header_size_limit": "4096000",
        "message_size_limit": "52428800",
        "smtpd_milters": f"inet:localhost:{stack.ports.opendkim}, inet:localhost:{stack.ports.rspamd_milter}",
        "non_smtpd_milters": "$smtpd_milters",
        "alias_maps": "hash:/etc/postfix/aliases",
    }
    assert settings(staged, *expected) == expected


def test_smtp_out_mail_to_root_reaches_a_reader(staged, stacks, stack_name):
    table = f"hash:{staged}/etc/postfix/aliases"
    result = subprocess.run(
        ["postmap", "-c", staged / "etc/postfix", "-q", "root", table], capture_output=True, text=True
    )
    assert result.stdout == f"{stacks[stack_name].dns.report_address}\n", result.stderr


# ---- Dovecot: SASL for every mailbox and service user ---------------------------------------


def test_sasl_users_holds_every_mailbox_and_service_user(staged, keys, stack_name):
    lines = (staged / SASL_USERS.lstrip("/")).read_text().splitlines()
    assert sorted(line.split(":", 1)[0] for line in lines) == sorted(keys[stack_name].password_hashes)


def test_a_relay_clients_password_matches_its_sasl_users_hash(staged, keys, stacks, stack_name):
    user = stacks[stack_name].relay_clients[0].group
    line = next(ln for ln in (staged / SASL_USERS.lstrip("/")).read_text().splitlines() if ln.startswith(f"{user}:"))
    password = keys[stack_name].sasl_passwords[user]
    result = subprocess.run(["doveadm", "pw", "-t", line.split(":")[1], "-p", password], capture_output=True, text=True)
    assert "(verified)" in result.stdout + result.stderr


def test_dovecot_serves_only_postfixs_auth_socket(staged):
    conf = staged / "etc/dovecot/dovecot.conf"
    result = subprocess.run(["doveconf", "-c", conf, "-n"], capture_output=True, text=True, check=True)
    assert "\nprotocols = none\n" in result.stdout
    assert "inet_listener" not in result.stdout
    listener = (
        "  unix_listener /var/spool/postfix/private/auth {\n    group = postfix\n    mode = 0660\n    user = postfix\n"
    )
    assert listener in result.stdout
    assert f"args = username_format=%n {SASL_USERS}" in result.stdout


# ---- OpenDKIM: the active key signs, every key is loaded ------------------------------------


@pytest.fixture(scope="module")
def opendkim_test_conf(staged) -> Path:
    """The rendered opendkim.conf and tables, moved under the staged directory: only the file
    locations differ from the host's. Test mode runs as the caller and logs to stderr."""
    root = staged / "opendkim-test"
    root.mkdir()
    here = f"{staged}/etc/opendkim"
    for table in (KEY_TABLE, SIGNING_TABLE):
        text = (staged / table.lstrip("/")).read_text()
        (root / Path(table).name).write_text(text.replace("/etc/opendkim", here))
    conf = (staged / OPENDKIM_CONF.lstrip("/")).read_text()
    conf = conf.replace(f"refile:{KEY_TABLE}", f"refile:{root}/keytable")
    conf = conf.replace(f"refile:{SIGNING_TABLE}", f"refile:{root}/signers")
    conf = re.sub(r"^(UserID|Syslog)\s.*$", "", conf, flags=re.M)
    (root / "opendkim.conf").write_text(conf)
    return root / "opendkim.conf"


def opendkim_signature(conf: Path, sender: str) -> dict[str, str]:
    """The tags of the DKIM-Signature OpenDKIM (test mode) adds to a message from `sender`."""
    message = conf.parent / "message"
    message.write_text(f"From: {sender}\r\nTo: someone@example.org\r\nSubject: test\r\n\r\nhello\r\n")
    result = subprocess.run(["opendkim", "-x", conf, "-t", message, "-vvv"], capture_output=True, text=True)
    match = re.search(r"hname='DKIM-Signature' hvalue='([^']*)'", result.stdout + result.stderr)
    if match is None:
        return {}
    return dict(tag.strip().split("=", 1) for tag in match.group(1).split(";") if "=" in tag)


def test_opendkim_signs_each_domain_and_its_subdomains_with_the_active_selector(opendkim_test_conf, stacks, stack_name):
    for domain in stacks[stack_name].domains:
        active = next(k.selector for k in domain.dkim if k.active)
        for sender in (f"someone@{domain.name}", f"someone@lists.{domain.name}"):
            signature = opendkim_signature(opendkim_test_conf, sender)
            assert (signature.get("d"), signature.get("s")) == (domain.name, active), sender


def test_opendkim_does_not_sign_for_other_domains(opendkim_test_conf):
    assert opendkim_signature(opendkim_test_conf, "someone@example.invalid") == {}


def test_a_key_being_rotated_in_is_loaded_but_does_not_sign(staged, stacks, stack_name):
    keytable = (staged / KEY_TABLE.lstrip("/")).read_text()
    signers = (staged / SIGNING_TABLE.lstrip("/")).read_text()
    for domain in stacks[stack_name].domains:
        for key in domain.dkim:
            assert f"{domain.name}:{key.selector}:" in keytable
            name = f"{key.selector}._domainkey.{domain.name}"
            assert (name in signers) == key.active


# ---- secrets and reloads --------------------------------------------------------------------


def test_smtp_out_secrets_are_readable_only_by_their_daemon(trees, stacks, stack_name):
    stack = stacks[stack_name]
    for tree in role_trees(trees[stack_name], "smtp_out"):
        files = tree.files
        assert (files[SASL_USERS].mode, files[SASL_USERS].owner, files[SASL_USERS].group) == (0o640, "root", "dovecot")
        key = files[tls_key_path(stack)]
        assert (key.mode, key.owner) == (0o600, "root")
        for domain in stack.domains:
            for k in domain.dkim:
                spec = files[dkim_key_path(domain.name, k.selector)]
                assert (spec.mode, spec.owner, spec.group) == (0o600, "opendkim", "opendkim")
                assert spec.content.startswith("-----BEGIN PRIVATE KEY-----")


def test_every_smtp_out_file_reloads_only_services_the_host_knows(trees, stack_name):
    for tree in role_trees(trees[stack_name], "smtp_out"):
        for path, spec in tree.files.items():
            assert set(spec.reload) <= set(tree.services), path
        assert tree.files["/etc/postfix/main.cf"].reload == ("postfix",)
        assert tree.files[SIGNING_TABLE].reload == ("opendkim",)
        # Dovecot re-reads a changed passwd-file by itself.
        assert tree.files[SASL_USERS].reload == ()


def test_every_smtp_out_gets_the_stack_wide_tables_rendered_once(trees, stack_name):
    """Sender logins and OpenDKIM's tables run to thousands of lines for a hosting provider's
    stack: rendered once for the stack, not once per host."""
    first, *others = role_trees(trees[stack_name], "smtp_out")
    assert others
    for tree in others:
        for table in (SENDER_LOGINS, KEY_TABLE, SIGNING_TABLE, "/etc/opendkim.conf"):
            assert tree.files[table] is first.files[table], table


def test_all_smtp_out_hosts_differ_only_in_their_own_names(trees, stacks, stack_name):
    """Identical replicas (case study): only the host's own names (banner, mydestination) differ."""
    stack = stacks[stack_name]
    hosts = {t.host: t for t in role_trees(trees[stack_name], "smtp_out")}
    first, *others = stack.hosts.smtp_out
    for other in others:
        for path, spec in hosts[first.name].files.items():
            theirs = hosts[other.name].files[path].content
            mine = spec.content.replace(f".{first.site}.{stack.infra_domain}", f".{other.site}.{stack.infra_domain}")
            assert mine == theirs, path


# ---- security: senders are who they logged in as; the real client; TLS policy -----------------


def sender_owner(staged: Path, address: str) -> str | None:
    """The logins `smtpd_sender_login_maps` gives `address`, as Postfix looks it up (postmap -q)."""
    table = f"hash:{staged}{SENDER_LOGINS}"
    result = subprocess.run(["postmap", "-c", staged / "etc/postfix", "-q", address, table], capture_output=True)
    return result.stdout.decode().strip() or None


def test_each_login_may_send_only_as_its_own_addresses(staged, stacks, stack_name):
    assert settings(staged, "smtpd_sender_login_maps", "smtpd_sender_restrictions") == {
        "smtpd_sender_login_maps": f"hash:{SENDER_LOGINS}",
        "smtpd_sender_restrictions": "reject_sender_login_mismatch",
    }
    stack = stacks[stack_name]
    for domain in stack.domains:
        # Every served domain's postmaster is someone's to answer as.
        assert sender_owner(staged, f"postmaster@{domain.name}")
    for client in stack.relay_clients:
        assert client.group in sender_owner(staged, client.mail_from).split(",")
    # The shared Roundcube login owns nothing: Roundcube submits as the logged-in user.
    lines = (staged / SENDER_LOGINS.lstrip("/")).read_text().splitlines()
    assert not any("roundcube" in line.split()[-1].split(",") for line in lines if line and not line.startswith("#"))


def test_the_lab_sender_table_follows_the_aliases(trees, tmp_path):
    staged = stage(role_trees(trees["lab"], "smtp_out")[0], tmp_path)
    assert sender_owner(staged, "alice@example.com") == "alice"
    assert sender_owner(staged, "team@example.com") == "alice,bob"  # an alias delivering to both
    assert sender_owner(staged, "alice@example.net") == "alice"  # through alice@example.com
    assert sender_owner(staged, "bob@example.org") == "bob"
    assert sender_owner(staged, "cron@example.com") == "cron"
    assert sender_owner(staged, "carol@example.com") is None  # forwarded elsewhere: nobody's here
    assert sender_owner(staged, "noreply@example.com") is None
    assert sender_owner(staged, "someone@remote.test") is None


def test_dovecot_gives_postfix_the_bare_lower_case_login(staged):
    conf = staged / "etc/dovecot/dovecot.conf"
    result = subprocess.run(["doveconf", "-c", conf, "-h", "auth_username_format"], capture_output=True, text=True)
    assert result.stdout.strip() == "%Ln", result.stderr


def test_submission_takes_the_client_address_from_the_frontends_proxy_header(staged):
    name = "submission/inet/smtpd_upstream_proxy_protocol"
    assert postconf(staged, "-P", name) == f"{name} = haproxy"


def test_the_webmail_host_and_relay_clients_are_spared_the_per_client_limits(staged, stacks, stack_name):
    stack = stacks[stack_name]
    exceptions = settings(staged, "smtpd_client_event_limit_exceptions")["smtpd_client_event_limit_exceptions"]
    listed = [e.strip() for e in exceptions.split(",")]
    assert "$mynetworks" in listed
    for address in [stack.webmail.address, *(c.address for c in stack.relay_clients)]:
        assert (f"[{address}]/128" if address.version == 6 else f"{address}/32") in listed
    # Everybody else keeps the case study's limits.
    assert settings(staged, "smtpd_client_connection_count_limit")["smtpd_client_connection_count_limit"] == "4"


def test_submission_speaks_tls_1_2_and_newer_with_strong_suites_and_no_vrfy(staged):
    assert settings(
        staged,
        "smtpd_tls_mandatory_protocols",
        "smtpd_tls_mandatory_ciphers",
        "tls_high_cipherlist",
        "disable_vrfy_command",
    ) == {
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_ciphers": "high",
        "tls_high_cipherlist": tls.CIPHERS,
        "disable_vrfy_command": "yes",
    }
    excluded = settings(staged, "smtpd_tls_mandatory_exclude_ciphers")["smtpd_tls_mandatory_exclude_ciphers"]
    assert {"aNULL", "eNULL", "EXPORT", "RC4"} <= {c.strip() for c in excluded.split(",")}
