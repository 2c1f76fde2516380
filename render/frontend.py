"""The NGINX frontends: TCP load balancers for submission, IMAPS and ManageSieve, the webmail site
behind a geo allow-list, and the MTA-STS policy for every mail domain.

Case study: section 1 (the smtp_out upstream, chrma0 primary, the others `backup`), section 3
(imap and sieve upstreams, the primary maildrop first, 4190 only for VPN and office networks) and
section 4 (Roundcube behind the frontends).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

from model import Host, Stack
from render import probes
from render import tls as tls_policy
from render.keys import KeyMaterial
from render.mta_sts import policy
from render.names import tls_cert_path, tls_key_path
from render.postfix import tls_files
from render.templates import render as render_template
from render.tree import Check, FileSpec, HostTree, Probe

NGINX_CONF = "/etc/nginx/nginx.conf"
STREAM_CONF = "/etc/nginx/streams-enabled/mail.conf"
WEBMAIL_CONF = "/etc/nginx/sites-enabled/webmail.conf"
MTA_STS_CONF = "/etc/nginx/sites-enabled/mta-sts.conf"
WEBMAIL_ALLOW = "/etc/nginx/conf.d/webmail-allow.geo"
DHPARAM = "/etc/nginx/conf.d/ffdhe2048.pem"
MTA_STS_ROOT = "/var/www/mta-sts"
MTA_STS_POLICY = f"{MTA_STS_ROOT}/.well-known/mta-sts.txt"

# Site-local round trips are milliseconds: a backend that has not answered a connect within 1 s is
# down, and the client moves on to the backup well inside the 2 s IMAP failover budget.
CONNECT_TIMEOUT = "1s"

SERVICE = {"nginx": "systemctl reload nginx"}
# `nginx -t` exits 0 on warnings (a conflicting server_name, an ignored directive): like Postfix's
# "warning:", an NGINX "[warn]" fails the check.
NGINX_CHECK = 'out=$(nginx -t 2>&1); rc=$?; echo "$out"; [ $rc -eq 0 ] && ! echo "$out" | grep -q "\\[warn\\]"'
CHECKS = (Check("nginx -t", ("sh", "-c", NGINX_CHECK)),)


def address_port(address: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _servers(primary: Host, others: list[Host], port: int) -> list[dict]:
    """The primary first and alone in the rotation; the others take over only while it is down."""
    return [{"address": address_port(primary.ipv6, port), "backup": False}] + [
        {"address": address_port(h.ipv6, port), "backup": True} for h in others if h.name != primary.name
    ]


def managesieve_allow(stack: Stack) -> list[str]:
    """Who may reach 4190: the stack's list plus the webmail host (Roundcube's sieve editor);
    an empty list leaves 4190 open to everybody."""
    networks = list(stack.managesieve_allow)
    if not networks:
        return []
    webmail = ip_network(stack.webmail.address)
    if not any(webmail.subnet_of(n) for n in networks if n.version == webmail.version):
        networks.append(webmail)
    return [str(n) for n in networks]


def upstreams(stack: Stack) -> list[dict]:
    ports = stack.ports
    maildrop, backup = stack.maildrop_primary, stack.maildrop_backup
    return [
        {
            "name": "smtp_out",
            "port": ports.submission,
            "comment": "Submission (587, STARTTLS) to smtp-out.",
            "servers": _servers(stack.smtp_out_primary, stack.hosts.smtp_out, ports.submission),
            "allow": [],
        },
        {
            "name": "imap",
            "port": ports.imaps,
            "comment": "IMAPS to the maildrops: users stay on one replica while it is up (Dovecot prefers that).",
            "servers": _servers(maildrop, [backup], ports.imaps),
            "allow": [],
        },
        {
            "name": "sieve",
            "port": ports.managesieve,
            "comment": "ManageSieve to the maildrops, only from the VPN and the internal networks.",
            "servers": _servers(maildrop, [backup], ports.managesieve),
            "allow": managesieve_allow(stack),
        },
    ]


def render(stack: Stack, host: Host, keys: KeyMaterial) -> HostTree:
    reload = tuple(SERVICE)
    tls = {"tls_cert": tls_cert_path(stack), "tls_key": tls_key_path(stack)}
    webmail = stack.webmail
    files = {
        NGINX_CONF: render_template(
            "frontend",
            NGINX_CONF,
            host=stack.fqdn(host),
            stream_files=[STREAM_CONF],
            http_files=[WEBMAIL_CONF, MTA_STS_CONF],
            tls_protocols=" ".join(tls_policy.PROTOCOLS),
            tls_ciphers=tls_policy.CIPHERS,
            dhparam=DHPARAM,
        ),
        STREAM_CONF: render_template(
            "frontend",
            STREAM_CONF,
            connect_timeout=CONNECT_TIMEOUT,
            upstreams=upstreams(stack),
            max_fails=stack.upstream_max_fails,
            fail_timeout=stack.upstream_fail_timeout,
        ),
        WEBMAIL_CONF: render_template(
            "frontend",
            WEBMAIL_CONF,
            server_name=stack.service_name("webmail"),
            allow_file=WEBMAIL_ALLOW,
            redirect=webmail.redirect,
            backend=f"http://{address_port(webmail.address, webmail.port)}",
            **tls,
        ),
        WEBMAIL_ALLOW: render_template("frontend", WEBMAIL_ALLOW, networks=[str(n) for n in webmail.allow]),
        MTA_STS_CONF: render_template(
            "frontend",
            MTA_STS_CONF,
            server_names=[f"mta-sts.{d}" for d in stack.domain_names],
            policy_root=MTA_STS_ROOT,
            **tls,
        ),
        DHPARAM: render_template("frontend", DHPARAM),
    }
    specs = {path: FileSpec(content, reload=reload) for path, content in files.items()}
    # NGINX reads the policy file on every request: a new policy needs no reload.
    specs[MTA_STS_POLICY] = FileSpec(policy(stack))
    specs.update(tls_files(stack, keys, reload))
    return HostTree(
        host=host.name, role="frontend", files=specs, checks=CHECKS, services=SERVICE, probes=host_probes(stack, host)
    )


def host_probes(stack: Stack, host: Host) -> tuple[Probe, ...]:
    """Each stream port through to its backends (submission's and IMAPS' greetings; ManageSieve,
    closed to the host's own address by its allow-list, accepts connections) and the webmail site
    (the host is outside its allow-list too: the redirect, or any answer short of a 5xx)."""
    address, ports, imap = str(host.ipv6), stack.ports, stack.service_name("imap")
    return (
        probes.banner(f"submission {ports.submission} greeting", address, ports.submission, "220 "),
        probes.banner(f"imaps {ports.imaps} greeting", address, ports.imaps, "* OK", tls_name=imap),
        probes.tcp(f"managesieve {ports.managesieve} accepts", address, ports.managesieve),
        probes.http("webmail site", address, 443, "/", tls_name=stack.service_name("webmail"), status_below=500),
    )
