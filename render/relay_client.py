"""A relay client: an existing server whose opensmtpd hands all its mail to smtp-out (case study,
"Bonus: opensmtpd on clients"), as the SASL user named after the server's group.
"""

from __future__ import annotations

from model import RelayClient, Stack
from render.keys import KeyMaterial
from render.postfix import root_address
from render.templates import render as render_template
from render.tree import Check, FileSpec, HostTree

SMTPD_CONF = "/etc/mail/smtpd.conf"
SECRETS = "/etc/mail/secrets"
ALIASES = "/etc/mail/aliases"
UNIT_DROP_IN = "/etc/systemd/system/opensmtpd.service.d/mail-cluster.conf"
# Debian's package runs the daemon as user opensmtpd: the secrets are root's and that group's.
SECRETS_MODE, SECRETS_GROUP = 0o640, "opensmtpd"

# OpenSMTPD has no reload; the drop-in needs systemd to re-read the unit first.
SERVICE = {"opensmtpd": "systemctl daemon-reload && systemctl restart opensmtpd"}
# `smtpd` by PATH: /usr/sbin/smtpd on a relay client (the binary the service runs), the unpacked
# package linked into /usr/local/sbin on a machine that runs Postfix (.ci/install-opensmtpd).
# -n parses the configuration and the tables it names, and starts nothing.
CHECKS = (Check("smtpd -n", ("smtpd", "-n", "-f", SMTPD_CONF)),)


def relay_url(stack: Stack, client: RelayClient) -> str:
    """smtp+tls: STARTTLS is mandatory; the user part is the label of the client's secrets line."""
    return f"smtp+tls://{client.group}@{stack.service_name('smtp-out')}:{stack.ports.submission}"


def secrets_line_values(client: RelayClient, keys: KeyMaterial) -> dict[str, str]:
    password = keys.sasl_passwords[client.group]
    if not password or any(c.isspace() for c in password):
        # The table is `label user:password` per line: whitespace would end the password early.
        raise ValueError(f"relay client {client.name}: the SASL password of {client.group!r} is empty or has a space")
    return {"label": client.group, "user": client.group, "password": password}


def render(stack: Stack, client: RelayClient, keys: KeyMaterial) -> HostTree:
    reload = tuple(SERVICE)
    smtpd_conf = render_template(
        "relay_client",
        SMTPD_CONF,
        aliases_file=ALIASES,
        secrets_file=SECRETS,
        relay_url=relay_url(stack, client),
        mail_from=client.mail_from,
    )
    files = {
        SMTPD_CONF: FileSpec(smtpd_conf, reload=reload),
        SECRETS: FileSpec(
            render_template("relay_client", SECRETS, **secrets_line_values(client, keys)),
            mode=SECRETS_MODE,
            group=SECRETS_GROUP,
            reload=reload,
        ),
        ALIASES: FileSpec(render_template("relay_client", ALIASES, root_address=root_address(stack)), reload=reload),
        UNIT_DROP_IN: FileSpec(render_template("relay_client", UNIT_DROP_IN, config=SMTPD_CONF), reload=reload),
    }
    return HostTree(host=client.name, role="relay_client", files=files, checks=CHECKS, services=SERVICE)
