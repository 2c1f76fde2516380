"""Roundcube on the existing Docker host (case study section 4): the compose file and the config
override the image reads from /var/roundcube/config.

Roundcube reaches IMAP and ManageSieve at imap.<infra_domain> and submission at
smtp-out.<infra_domain>, all through the frontends. It submits with the credentials of the user who
is logged in (Roundcube's `%u`/`%p`), not a service login of its own: smtp-out then lets it send only
as that user's addresses (render.smtp_out.sender_logins), as any other client of that user. The
smtp-out login `roundcube` still exists but owns no sender address, so nothing can be sent with it.
"""

from __future__ import annotations

import shlex

from model import Stack
from model.stack import Webmail
from render.keys import KeyMaterial
from render.templates import render as render_template
from render.tree import Check, FileSpec, HostTree

DIRECTORY = "/srv/roundcube"
COMPOSE_FILE = f"{DIRECTORY}/docker-compose.yaml"
CUSTOM_CONFIG = f"{DIRECTORY}/config/custom.inc.php"
CA_FILE = f"{DIRECTORY}/config/ca.pem"
# Where the image looks for extra *.php config files; ./config is mounted there.
CONTAINER_CONFIG_DIR = "/var/roundcube/config"
SERVICE_NAME = CONTAINER_NAME = "roundcubemail"
# Roundcube's placeholders for the IMAP login and password of the session.
SMTP_USER, SMTP_PASS = "%u", "%p"
PLUGINS = ("managesieve",)
# Apache in the image runs as www-data (uid 33, as on Debian): it reads the config, nobody else.
SECRET_MODE, SECRET_GROUP = 0o640, "www-data"

SERVICE = {"roundcube": f"docker compose -f {COMPOSE_FILE} up -d"}


def php_literal(value: str | int | bool | tuple | list) -> str:
    """A PHP literal for value: single-quoted strings escape only backslash and quote."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple | list):
        return "array(" + ", ".join(php_literal(v) for v in value) + ")"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def environment(stack: Stack) -> dict[str, str]:
    """The image entrypoint's settings. Both services go through the frontends: IMAPS on 993
    (TLS from the first byte: ssl://), submission on 587 with STARTTLS (tls://)."""
    return {
        "ROUNDCUBEMAIL_DEFAULT_HOST": f"ssl://{stack.service_name('imap')}",
        "ROUNDCUBEMAIL_DEFAULT_PORT": str(stack.ports.imaps),
        "ROUNDCUBEMAIL_SMTP_SERVER": f"tls://{stack.service_name('smtp-out')}",
        "ROUNDCUBEMAIL_SMTP_PORT": str(stack.ports.submission),
        "ROUNDCUBEMAIL_SKIN": "elastic",
        "ROUNDCUBEMAIL_DB_TYPE": "sqlite",
    }


def checks(webmail: Webmail) -> tuple[Check, ...]:
    """The Docker host's own tools when it has them: `docker compose config` and the image's php.
    Elsewhere (CI): php-cli, and the compose-spec schema that check-jsonschema ships."""
    compose = (
        f"if docker compose version >/dev/null 2>&1; then exec docker compose -f {COMPOSE_FILE} config --quiet; fi; "
        f"exec check-jsonschema --builtin-schema vendor.compose-spec {COMPOSE_FILE}"
    )
    # The config reaches the container on stdin: the Docker daemon does not see this check's
    # private mounts, and the secrets stay out of its command line.
    php = (
        f"if command -v php >/dev/null; then exec php -l {CUSTOM_CONFIG}; fi; "
        f"exec docker run --rm -i --entrypoint php {shlex.quote(webmail.image)} -l < {CUSTOM_CONFIG}"
    )
    return (Check("docker compose config", ("sh", "-c", compose)), Check("php -l", ("sh", "-c", php)))


def render(stack: Stack, webmail: Webmail, keys: KeyMaterial) -> HostTree:
    reload = tuple(SERVICE)
    compose = render_template(
        "webmail",
        COMPOSE_FILE,
        service=SERVICE_NAME,
        container_name=CONTAINER_NAME,
        image=webmail.image,
        port=webmail.port,
        config_dir=CONTAINER_CONFIG_DIR,
        environment=environment(stack),
    )
    config = render_template(
        "webmail",
        CUSTOM_CONFIG,
        des_key=php_literal(keys.roundcube_des_key),
        smtp_user=php_literal(SMTP_USER),
        smtp_pass=php_literal(SMTP_PASS),
        plugins=php_literal(PLUGINS),
        managesieve_host=php_literal(f"tls://{stack.service_name('imap')}"),
        managesieve_port=php_literal(stack.ports.managesieve),
        ca_file=php_literal(f"{CONTAINER_CONFIG_DIR}/ca.pem"),
        mail_domain=php_literal(stack.domains[0].name),
        proxy_whitelist=php_literal([a for h in stack.hosts.frontend for a in h.site_local_addresses]),
    )
    files = {
        COMPOSE_FILE: FileSpec(compose, reload=reload),
        # PHP reads the config on every request; `up -d` recreates the container only when the
        # compose file changed, which is when it is needed.
        CUSTOM_CONFIG: FileSpec(config, mode=SECRET_MODE, group=SECRET_GROUP, reload=reload),
        CA_FILE: FileSpec(keys.ca_cert, reload=reload),
    }
    return HostTree(host=webmail.host, role="webmail", files=files, checks=checks(webmail), services=SERVICE)
