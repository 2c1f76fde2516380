"""Roundcube in the lab: Debian's roundcube package on php-fpm behind nginx, in a network namespace.

Prod runs the roundcube/roundcubemail image with docker compose; images cannot be pulled where
the lab runs, so the lab serves Debian's Roundcube with the same settings (render.webmail's
values: elastic skin, sqlite, managesieve, threads, SMTP as the logged-in user, the des_key, IMAP on
the frontends' 993, SMTP to smtp-out on 587). nginx listens on stack.webmail.address:port like
the container's published port, so the frontends' rendered 443 server block proxies to it as is.

Everything lives under one work directory:
    config/      Roundcube's config dir (ROUNDCUBE_CONFIG_DIR): config.inc.php, defaults, CA
    db/          the sqlite database, created from Roundcube's own schema
    temp/, logs/ Roundcube's temp and log dirs; php-fpm and nginx logs too
    run/         pid files, the php-fpm socket, nginx's temp dirs
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path, PurePosixPath
from typing import Any

from model import Stack
from render import webmail as render_webmail
from render.keys import KeyMaterial

ROUNDCUBE = Path("/var/lib/roundcube")  # INSTALL_PATH of Debian's package; public_html is the docroot
ROUNDCUBE_ETC = Path("/etc/roundcube")
SCHEMA = Path("/usr/share/roundcube/SQL/sqlite.initial.sql")
FASTCGI_CONF = Path("/etc/nginx/fastcgi.conf")
MIME_TYPES = Path("/etc/nginx/mime.types")
NGINX = "/usr/sbin/nginx"
# The image's default ROUNDCUBEMAIL_PLUGINS; custom.inc.php adds managesieve to them.
IMAGE_PLUGINS = ("archive", "zipdownload")
# The files render.webmail writes into the mounted config dir, by their names there.
CUSTOM_CONFIG = PurePosixPath(render_webmail.CUSTOM_CONFIG)
CA_FILE = PurePosixPath(render_webmail.CA_FILE)


def php_fpm_binary() -> str:
    """Debian names php-fpm after the PHP version (php-fpm8.2 on bookworm)."""
    found = sorted(Path("/usr/sbin").glob("php-fpm*"))
    if not found:
        raise FileNotFoundError("php-fpm is not installed (.ci/install-browser installs it)")
    return str(found[-1])


# ---- Roundcube's settings ---------------------------------------------------------------------


def container_settings(stack: Stack, workdir: Path) -> dict[str, Any]:
    """What the image's entrypoint writes into its config.inc.php from the compose environment
    (render.webmail.environment); the image's own defaults where the compose file sets nothing."""
    env = render_webmail.environment(stack)
    if env["ROUNDCUBEMAIL_DB_TYPE"] != "sqlite":
        raise ValueError(f"the lab runs Roundcube on sqlite, prod has {env['ROUNDCUBEMAIL_DB_TYPE']}")
    return {
        "db_dsnw": f"sqlite:///{workdir / 'db' / 'sqlite.db'}?mode=0640",
        "imap_host": f"{env['ROUNDCUBEMAIL_DEFAULT_HOST']}:{env['ROUNDCUBEMAIL_DEFAULT_PORT']}",
        "smtp_host": f"{env['ROUNDCUBEMAIL_SMTP_SERVER']}:{env['ROUNDCUBEMAIL_SMTP_PORT']}",
        "temp_dir": f"{workdir / 'temp'}/",
        "plugins": list(IMAGE_PLUGINS),
        "zipdownload_selection": True,
        "log_driver": "stdout",
        "skin": env["ROUNDCUBEMAIL_SKIN"],
    }


def config_php(stack: Stack, workdir: Path) -> str:
    """config.inc.php as the image builds it (its settings, then every file of the mounted config
    dir), then what differs in the lab: log to a file, trust the CA at its lab path."""
    config = workdir / "config"
    lines = [
        "<?php",
        "// Written by lab/webmail.py: the roundcube/roundcubemail image's config, in the lab.",
        "$config = [];",
    ]
    lines += [
        f"$config[{render_webmail.php_literal(k)}] = {render_webmail.php_literal(v)};"
        for k, v in container_settings(stack, workdir).items()
    ]
    lines.append(f"include {render_webmail.php_literal(str(config / CUSTOM_CONFIG.name))};")
    lines += [
        "// stdout goes nowhere under php-fpm: keep Roundcube's log where the tests can show it.",
        "$config['log_driver'] = 'file';",
        f"$config['log_dir'] = {render_webmail.php_literal(str(workdir / 'logs') + '/')};",
        "foreach (['imap_conn_options', 'smtp_conn_options', 'managesieve_conn_options'] as $name) {",
        "    if (isset($config[$name]['ssl']['cafile'])) {",
        f"        $config[$name]['ssl']['cafile'] = {render_webmail.php_literal(str(config / CA_FILE.name))};",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ---- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webmail:
    workdir: Path
    netns: str
    address: str
    port: int
    # argv prefix that runs a command in the webmail host; default `ip netns exec <netns>`. The
    # lab passes its host root's nsenter prefix, so its mount namespace (resolv.conf) applies too.
    enter: tuple[str, ...] = ()

    @property
    def prefix(self) -> tuple[str, ...]:
        return self.enter or ("ip", "netns", "exec", self.netns)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ip_address(self.address).version == 6 else self.address
        return f"http://{host}:{self.port}/"

    def path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)


def php_fpm_conf(wm: Webmail) -> str:
    run, logs = wm.path("run"), wm.path("logs")
    return f"""[global]
pid = {run}/php-fpm.pid
error_log = {logs}/php-fpm.log
daemonize = yes

[roundcube]
; The pool runs as root (php-fpm -R): the work dir may sit below a directory only root can enter.
listen = {run}/php-fpm.sock
listen.mode = 0600
pm = ondemand
pm.max_children = 4
pm.process_idle_timeout = 30s
catch_workers_output = yes
clear_env = yes
env[ROUNDCUBE_CONFIG_DIR] = {wm.path("config")}
env[PATH] = /usr/bin:/bin
php_admin_value[error_log] = {logs}/php-errors.log
php_admin_flag[log_errors] = on
php_admin_value[upload_max_filesize] = 25M
php_admin_value[post_max_size] = 30M
php_admin_value[memory_limit] = 128M
php_admin_value[session.save_path] = {wm.path("temp")}
"""


def nginx_conf(wm: Webmail) -> str:
    run, logs = wm.path("run"), wm.path("logs")
    host = f"[{wm.address}]" if ip_address(wm.address).version == 6 else wm.address
    temp = "\n".join(
        f"    {kind}_temp_path {run}/nginx-{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Roundcube on {host}:{wm.port}, like the container's published port in prod.
user root;
worker_processes 1;
pid {run}/nginx.pid;
error_log {logs}/nginx-error.log;
events {{
    worker_connections 128;
}}
http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    access_log {logs}/nginx-access.log;
{temp}
    server {{
        listen {host}:{wm.port};
        root {ROUNDCUBE}/public_html;
        index index.php;
        client_max_body_size 30m;

        location ~ \\.php$ {{
            include {FASTCGI_CONF};
            fastcgi_pass unix:{run}/php-fpm.sock;
        }}
    }}
}}
"""


def write(workdir: Path, stack: Stack, keys: KeyMaterial, netns: str, enter: tuple[str, ...] = ()) -> Webmail:
    """Roundcube's config, php-fpm's and nginx's, and a fresh sqlite db, all under workdir."""
    wm = Webmail(workdir, netns, str(stack.webmail.address), stack.webmail.port, tuple(enter))
    for sub in ("config", "db", "temp", "logs", "run"):
        wm.path(sub).mkdir(parents=True, exist_ok=True)
    config = wm.path("config")
    # Roundcube reads defaults.inc.php from its config dir before config.inc.php.
    for name in ("defaults.inc.php", "mimetypes.php"):
        link = config / name
        if not link.exists():
            link.symlink_to(ROUNDCUBE_ETC / name)
    # prod's custom config and CA exactly as render.webmail renders them for the Docker host
    tree = render_webmail.render(stack, stack.webmail, keys)
    for rendered in (CUSTOM_CONFIG, CA_FILE):
        target = config / rendered.name
        target.write_text(tree.files[str(rendered)].content)
        target.chmod(0o600)
    (config / "config.inc.php").write_text(config_php(stack, workdir))
    wm.path("php-fpm.conf").write_text(php_fpm_conf(wm))
    wm.path("nginx.conf").write_text(nginx_conf(wm))
    init_db(wm)
    return wm


def init_db(wm: Webmail) -> None:
    db = wm.path("db", "sqlite.db")
    if db.exists():
        return
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA.read_text())
    db.chmod(0o640)


# ---- processes --------------------------------------------------------------------------------


def _in_host(wm: Webmail, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*wm.prefix, *argv], capture_output=True, text=True, **kwargs)


def start(wm: Webmail, timeout: float = 20.0) -> None:
    """php-fpm, then nginx, in wm.netns; returns once Roundcube's login page answers."""
    fpm = php_fpm_binary()
    checked = _in_host(wm, fpm, "-t", "-R", "-y", str(wm.path("php-fpm.conf")))
    if checked.returncode != 0:
        raise RuntimeError(f"php-fpm -t: {checked.stderr}")
    for argv in (
        (fpm, "-R", "-y", str(wm.path("php-fpm.conf"))),
        (NGINX, "-q", "-p", str(wm.path("run")), "-c", str(wm.path("nginx.conf"))),
    ):
        result = _in_host(wm, *argv)
        if result.returncode != 0:
            stop(wm)
            raise RuntimeError(f"{argv[0]}: {result.stderr}{tail(wm)}")
    try:
        wait_http(wm, timeout)
    except TimeoutError:
        stop(wm)
        raise


def get(wm: Webmail, timeout: float = 5.0) -> tuple[int, str]:
    """GET the webmail URL from inside the namespace: (status, body)."""
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({wm.url!r}, timeout={timeout})\n"
        "    print(r.status); sys.stdout.write(r.read().decode(errors='replace'))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); sys.stdout.write(e.read().decode(errors='replace'))\n"
    )
    # The host's python3: the project's venv may be hidden by the host's fresh /tmp.
    result = _in_host(wm, "/usr/bin/python3", "-c", probe, timeout=timeout + 5)
    if result.returncode != 0:
        raise ConnectionError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no answer")
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def wait_http(wm: Webmail, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = get(wm)
            if status == 200 and 'name="_user"' in body:
                return
            last = f"HTTP {status}: {body[:300]}"
        except ConnectionError as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"Roundcube at {wm.url} in {wm.netns} did not answer: {last}{tail(wm)}")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(wm: Webmail, timeout: float = 10.0) -> None:
    """nginx, then php-fpm: graceful stop, then kill what is left."""
    # nginx: graceful (SIGQUIT); php-fpm: SIGTERM, its graceful SIGQUIT waits for idle workers.
    for name, sig in (("nginx.pid", signal.SIGQUIT), ("php-fpm.pid", signal.SIGTERM)):
        pid = _pid(wm.path("run", name))
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def tail(wm: Webmail, lines: int = 20) -> str:
    """The end of every log, for error messages."""
    out = []
    for log in sorted(wm.path("logs").glob("*")):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        if text:
            out.append(f"\n--- {log.name}\n" + "\n".join(text))
    return "".join(out)
