"""The frontends' NGINX configuration, as NGINX itself reads it (`nginx -t`, `nginx -T`) with the
rendered files laid over /etc/nginx by the push script."""

from __future__ import annotations

import re
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest
from conftest import assert_checks_pass, check_with_content, run_push

from render import render_host, tls
from render.frontend import MTA_STS_POLICY, STREAM_CONF, WEBMAIL_ALLOW, WEBMAIL_CONF
from render.mta_sts import policy
from render.names import tls_key_path
from render.tree import Check, HostTree


@pytest.fixture(scope="module")
def frontends(stacks, keys) -> dict[str, dict[str, HostTree]]:
    """stack name -> frontend name -> its tree."""
    return {
        name: {h.name: render_host(stack, "frontend", h, keys[name]) for h in stack.hosts.frontend}
        for name, stack in stacks.items()
    }


def nginx_dump(tree: HostTree, out) -> str:
    """`nginx -T` inside the push script's overlay: every file NGINX read, in the order it read them
    (after a `# configuration file <path>:` line each), without comments."""
    probe = replace(tree, checks=(Check("nginx -T", ("sh", "-c", f"nginx -T > {out} 2>&1")),))
    result = run_push(probe, "--check-only")
    assert result.returncode == 0, result.stderr
    return re.sub(r"(?m)^(?!# configuration file )([^#\n]*)#.*$", r"\1", out.read_text())


@pytest.fixture(scope="module")
def dumps(stacks, frontends, tmp_path_factory) -> dict[str, str]:
    """stack name -> `nginx -T` of its first frontend (all frontends render the same NGINX config)."""
    out = tmp_path_factory.mktemp("nginx")
    return {
        name: nginx_dump(frontends[name][stack.hosts.frontend[0].name], out / f"{name}.txt")
        for name, stack in stacks.items()
    }


def upstream_servers(dump: str, name: str) -> list[tuple[str, str]]:
    """[(address, parameters)] of `upstream <name>`, in order."""
    block = re.search(rf"upstream {name} \{{(.*?)\}}", dump, re.S)
    assert block, f"no upstream {name} in nginx -T"
    return re.findall(r"server (\S+) ([^;]*);", block.group(1))


def stream_server(dump: str, upstream: str) -> str:
    block = re.search(rf"server \{{([^{{}}]*proxy_pass {upstream};[^{{}}]*)\}}", dump)
    assert block, f"no server proxying to {upstream} in nginx -T"
    return block.group(1)


def address(server: str):
    """The address of `[2001:db8::7]:587` or `192.0.2.7:587`."""
    return ip_address(server.rpartition(":")[0].strip("[]"))


def included_file(dump: str, path: str) -> str:
    section = re.search(rf"# configuration file {re.escape(path)}:\n(.*?)(?:\n# configuration file|\Z)", dump, re.S)
    assert section, f"NGINX did not read {path}"
    return section.group(1)


@pytest.mark.checkers
def test_every_frontend_passes_nginx_t(frontends):
    for trees in frontends.values():
        for tree in trees.values():
            assert_checks_pass(tree)


@pytest.mark.checkers
@pytest.mark.parametrize(
    ("upstream", "port"),
    [("smtp_out", "submission"), ("imap", "imaps"), ("sieve", "managesieve")],
)
def test_upstream_sends_everything_to_the_primary_and_keeps_the_others_as_backup(
    stacks, dumps, stack_name, upstream, port
):
    stack = stacks[stack_name]
    primary, hosts = (
        (stack.smtp_out_primary, stack.hosts.smtp_out)
        if upstream == "smtp_out"
        else (stack.maildrop_primary, stack.hosts.maildrop)
    )
    servers = upstream_servers(dumps[stack_name], upstream)
    assert address(servers[0][0]) == primary.ipv6
    assert {address(s) for s, _ in servers} == {h.ipv6 for h in hosts}
    assert all(s.endswith(f":{getattr(stack.ports, port)}") for s, _ in servers)
    backups = ["backup" in params.split() for _, params in servers]
    assert backups == [False] + [True] * (len(hosts) - 1)
    for _, params in servers:
        assert f"max_fails={stack.upstream_max_fails}" in params.split()
        assert f"fail_timeout={stack.upstream_fail_timeout}s" in params.split()


@pytest.mark.checkers
def test_a_dead_backend_is_given_up_quickly(dumps, stack_name):
    timeout = re.search(r"proxy_connect_timeout (\d+)s;", dumps[stack_name])
    assert timeout and int(timeout.group(1)) <= 5


@pytest.mark.checkers
@pytest.mark.parametrize(("upstream", "port"), [("smtp_out", 587), ("imap", 993), ("sieve", 4190)])
def test_mail_ports_listen_on_ipv4_and_ipv6(dumps, stack_name, upstream, port):
    listens = re.findall(r"listen (\S+);", stream_server(dumps[stack_name], upstream))
    assert sorted(listens) == sorted([str(port), f"[::]:{port}"])


@pytest.mark.checkers
def test_submission_and_imaps_are_open_to_everybody(dumps, stack_name):
    for upstream in ("smtp_out", "imap"):
        server = stream_server(dumps[stack_name], upstream)
        assert "allow " not in server and "deny " not in server


@pytest.mark.checkers
def test_managesieve_admits_only_the_allowed_networks_and_the_webmail_host(stacks, dumps, stack_name):
    stack = stacks[stack_name]
    server = stream_server(dumps[stack_name], "sieve")
    rules = re.findall(r"(allow|deny) (\S+);", server)
    assert rules[-1] == ("deny", "all")
    allowed = [ip_network(n) for verb, n in rules[:-1] if verb == "allow"]
    assert len(allowed) == len(rules) - 1
    assert set(stack.managesieve_allow) <= set(allowed)
    # Roundcube's sieve editor connects from the Docker host.
    assert any(stack.webmail.address in n for n in allowed if n.version == stack.webmail.address.version)


@pytest.mark.checkers
def test_managesieve_is_open_when_no_network_is_listed(stacks, keys, tmp_path):
    stack = stacks["lab"].model_copy(update={"managesieve_allow": []})
    dump = nginx_dump(render_host(stack, "frontend", stack.hosts.frontend[0], keys["lab"]), tmp_path / "T.txt")
    server = stream_server(dump, "sieve")
    assert "allow " not in server and "deny " not in server


@pytest.mark.checkers
def test_webmail_is_proxied_only_for_the_geo_allow_list(stacks, dumps, stack_name):
    stack, dump = stacks[stack_name], dumps[stack_name]
    geo = re.search(r"geo \$allowed_user \{(.*?)\}", dump, re.S).group(1)
    assert "default 0;" in geo
    allow_file = re.search(r"include (\S+);", geo).group(1)
    assert allow_file == WEBMAIL_ALLOW
    entries = re.findall(r"^(\S+) (\S+);$", included_file(dump, allow_file), re.M)
    assert entries == [(str(n), "1") for n in stack.webmail.allow]
    https = re.search(r"server \{([^{}]*listen 443 ssl http2;.*?)\n\}", dump, re.S).group(1)
    assert f"server_name {stack.service_name('webmail')};" in https
    redirect = re.escape(stack.webmail.redirect)
    assert re.search(rf"if \(\$allowed_user = 0\) \{{\s*rewrite \^ {redirect} redirect;", https)
    backend = re.search(r"proxy_pass http://(\S+);", https).group(1)
    assert address(backend) == stack.webmail.address and backend.endswith(f":{stack.webmail.port}")
    for header in ("Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For $proxy_add_x_forwarded_for"):
        assert f"proxy_set_header {header};" in https
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in https


@pytest.mark.checkers
def test_webmail_over_http_is_redirected_to_https(stacks, dumps, stack_name):
    name = stacks[stack_name].service_name("webmail")
    plain = re.search(r"server \{([^{}]*listen 80;.*?)\n\}", dumps[stack_name], re.S).group(1)
    assert f"server_name {name};" in plain
    assert f"return 301 https://{name}$request_uri;" in plain


@pytest.mark.checkers
def test_mta_sts_policy_is_served_for_every_mail_domain(stacks, frontends, dumps, stack_name):
    stack = stacks[stack_name]
    server = re.search(r"server \{([^{}]*server_name mta-sts\..*?)\n\}", dumps[stack_name], re.S).group(1)
    names = re.search(r"server_name ([^;]+);", server).group(1).split()
    assert names == [f"mta-sts.{d}" for d in stack.domain_names]
    assert "listen 443 ssl http2;" in server and "listen 80" not in server
    root = re.search(r"root (\S+);", server).group(1)
    assert f"{root}/.well-known/mta-sts.txt" == MTA_STS_POLICY
    served = frontends[stack_name][stack.hosts.frontend[0].name].files[MTA_STS_POLICY].content
    assert served == policy(stack)
    assert re.findall(r"^mx: (\S+)$", served, re.M) == [stack.fqdn(h) for h in stack.hosts.smtp_in]


def test_tls_key_is_readable_by_root_only(stacks, frontends):
    for name, trees in frontends.items():
        for tree in trees.values():
            key = tree.files[tls_key_path(stacks[name])]
            assert (key.mode, key.owner) == (0o600, "root")


def test_config_changes_reload_nginx(frontends):
    tree = next(iter(frontends["prod"].values()))
    assert tree.services == {"nginx": "systemctl reload nginx"}
    assert all(tree.files[p].reload == ("nginx",) for p in (STREAM_CONF, WEBMAIL_CONF, WEBMAIL_ALLOW))


@pytest.mark.checkers
def test_a_broken_stream_config_fails_with_nginx_message(frontends):
    tree = next(iter(frontends["lab"].values()))
    content = tree.files[STREAM_CONF].content.replace("proxy_pass smtp_out;", "proxy_pas smtp_out;")
    result = check_with_content(tree, STREAM_CONF, content)
    assert result.returncode == 1
    assert 'unknown directive "proxy_pas"' in result.stderr
    assert STREAM_CONF in result.stderr


@pytest.mark.checkers
def test_an_nginx_warning_fails_the_check(stacks, frontends):
    tree = next(iter(frontends["lab"].values()))
    # A second server with the same name on port 80: NGINX ignores it, says "[warn]" and exits 0.
    name = stacks["lab"].service_name("webmail")
    content = tree.files[WEBMAIL_CONF].content + f"server {{\n    listen 80;\n    server_name {name};\n}}\n"
    result = check_with_content(tree, WEBMAIL_CONF, content)
    assert result.returncode == 1
    assert "[warn]" in result.stderr and "conflicting server name" in result.stderr


# ---- security: the client's address reaches the backends, TLS policy, HSTS -----------------------


@pytest.mark.checkers
@pytest.mark.parametrize("upstream", ["smtp_out", "imap", "sieve"])
def test_every_mail_backend_learns_the_client_address_from_a_proxy_header(dumps, stack_name, upstream):
    assert re.search(r"^\s*proxy_protocol on;", stream_server(dumps[stack_name], upstream), re.M)


@pytest.mark.checkers
def test_https_speaks_tls_1_2_and_newer_with_strong_suites_only(dumps, stack_name):
    protocols = re.findall(r"^\s*ssl_protocols ([^;]*);", dumps[stack_name], re.M)
    assert protocols == ["TLSv1.2 TLSv1.3"], protocols
    ciphers = re.findall(r"^\s*ssl_ciphers ([^;]*);", dumps[stack_name], re.M)
    assert ciphers == [tls.CIPHERS]
    assert not any(weak in tls.CIPHERS for weak in ("NULL", "ADH", "AECDH", "RC4", "DES", "EXP", "MD5"))


@pytest.mark.checkers
def test_webmail_and_mta_sts_send_hsts(stacks, dumps, stack_name):
    for path in (WEBMAIL_CONF, "/etc/nginx/sites-enabled/mta-sts.conf"):
        https = [s for s in re.split(r"\n(?=server \{)", included_file(dumps[stack_name], path)) if "listen 443" in s]
        assert https, path
        for server in https:
            header = re.search(r'add_header Strict-Transport-Security "max-age=(\d+)" always;', server)
            assert header and int(header.group(1)) >= 31536000, server
