"""Webmail as a person uses it: headless Chromium logs in to Roundcube and sees the inbox.

The first tests start lab.webmail (Debian's Roundcube on php-fpm + nginx, configured from the
lab stack) in a network namespace of their own, with a small Dovecot answering IMAPS on the
frontends' name, and drive Chromium through chromedriver (Debian's, never a downloaded one).
The last test goes through the running lab (`python -m lab status --json`): the frontends' 443
with the geo allow-list, the real maildrops and smtp-out.

Run as a script inside a namespace, this file is the browser driver itself: Chromium, chromedriver
and selenium must share a network namespace, so the test runs them there together:
    ip netns exec NS python tests/test_webmail_browser.py SCENARIO_JSON  ->  RESULT_JSON on stdout
Screenshots land in artifacts/ (gitignored; CI keeps them).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
# Roundcube's failure notices ("Login failed.", "SMTP Error ...").
ALERTS = "#messagestack .warning, #messagestack .error"
LIST_LOADED = "return !!(window.rcmail && rcmail.env.messagecount !== undefined && !rcmail.busy)"


# ---- the browser driver (runs inside the namespace) -------------------------------------------


def drive(scenario: dict[str, Any]) -> dict[str, Any]:
    """Log in, list the inbox, optionally open a message and send one; screenshots on the way."""
    os.environ["SE_OFFLINE"] = "true"  # never let selenium look for a driver or browser online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(scenario["screenshots"])
    shots.mkdir(parents=True, exist_ok=True)
    prefix = scenario.get("name", "webmail")
    result: dict[str, Any] = {"screenshots": []}
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    rules = ", ".join(f"MAP {name} {address}" for name, address in scenario.get("resolve", {}).items())
    if rules:
        options.add_argument(f"--host-resolver-rules={rules}")
    # The lab's frontends carry a certificate from the lab's throwaway CA.
    options.accept_insecure_certs = bool(scenario.get("accept_insecure_certs"))
    # Passing the driver's path skips Selenium Manager entirely.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, scenario.get("timeout", 20))

    def shot(step: str) -> None:
        path = shots / f"{prefix}-{step}.png"
        driver.save_screenshot(str(path))
        result["screenshots"].append(str(path))

    try:
        driver.get(scenario["url"])
        result["landed"] = driver.current_url
        result["title"] = driver.title
        if not scenario.get("user"):
            shot("landing")
            return result
        wait.until(ec.visibility_of_element_located((By.ID, "rcmloginuser"))).send_keys(scenario["user"])
        driver.find_element(By.ID, "rcmloginpwd").send_keys(scenario["password"])
        shot("login")
        driver.find_element(By.ID, "rcmloginsubmit").click()
        # Either the mail view or Roundcube's error ("Login failed.", "Connection to storage server failed.").
        wait.until(lambda d: d.find_elements(By.ID, "messagelist") or d.find_elements(By.CSS_SELECTOR, ALERTS))
        errors = driver.find_elements(By.CSS_SELECTOR, ALERTS)
        if errors:
            result["login_error"] = errors[0].text
            shot("login-error")
            return result
        # The list is loaded (possibly empty) once Roundcube knows the message count and is idle.
        list_loaded = lambda d: d.execute_script(LIST_LOADED)  # noqa: E731
        wait.until(list_loaded)
        subjects = lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#messagelist span.subject")]  # noqa: E731
        result["inbox_subjects"] = subjects()
        shot("inbox")

        send = scenario.get("send")
        if send:
            driver.get(scenario["url"].rstrip("/") + "/?_task=mail&_action=compose")
            to = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".recipient-input input")))
            to.send_keys(send["to"] + ",")
            driver.find_element(By.ID, "compose-subject").send_keys(send["subject"])
            driver.find_element(By.ID, "composebody").send_keys(send["body"])
            shot("compose")
            driver.find_element(By.CSS_SELECTOR, "button.btn.send, a.send").click()
            # Roundcube goes back to the list once the message is sent, or shows an SMTP error.
            wait.until(lambda d: d.find_elements(By.ID, "messagelist") or d.find_elements(By.CSS_SELECTOR, ALERTS))
            errors = driver.find_elements(By.CSS_SELECTOR, ALERTS)
            result["send_error"] = errors[0].text if errors else None
            shot("sent")

        wanted = scenario.get("open_subject")
        if wanted:
            deadline = time.monotonic() + scenario.get("delivery_timeout", 30)
            while wanted not in " ".join(subjects()) and time.monotonic() < deadline:
                time.sleep(1)
                driver.refresh()
                wait.until(list_loaded)
            result["inbox_subjects"] = subjects()
            row = driver.find_element(
                By.XPATH, f"//*[@id='messagelist']//span[contains(@class,'subject')][contains(., {json.dumps(wanted)})]"
            )
            row.click()
            frame = wait.until(ec.presence_of_element_located((By.ID, "messagecontframe")))
            driver.switch_to.frame(frame)
            body = wait.until(ec.presence_of_element_located((By.ID, "messagebody")))
            result["opened_body"] = body.text
            driver.switch_to.default_content()
            shot("message")
        return result
    except Exception as err:  # the caller shows what the browser saw
        result["error"] = f"{type(err).__name__}: {err}"
        result["page_url"] = driver.current_url
        result["page_text"] = driver.find_element(By.TAG_NAME, "body").text[:2000]
        shot("error")
        return result
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(drive(json.loads(sys.argv[1]))))
    sys.exit(0)


# ---- the tests --------------------------------------------------------------------------------

import pytest  # noqa: E402

sys.path.insert(0, str(ROOT))

from lab import webmail  # noqa: E402

MISSING = [p for p in (CHROMIUM, CHROMEDRIVER, webmail.ROUNDCUBE / "public_html") if not Path(p).exists()]
# CI installs the browser (.ci/install-browser): there a missing package fails instead of skipping.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or (bool(MISSING) and os.environ.get("CI") != "true"),
    reason=f"needs root and the packages of .ci/install-browser (missing: {MISSING})",
)
ACCOUNT = "alice"
WELCOME = "Welcome to the lab webmail"
WELCOME_BODY = "This message was put in the Maildir by the test."
DOVECOT_CONF = """# A minimal IMAPS server standing in for the frontends + maildrop: TLS with the cluster's
# certificate on 993, one passwd-file user, a Maildir owned by `mail` (Dovecot refuses uid 0).
instance_name = {name}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
auth_mechanisms = plain login
# A refused login answers at once: the wrong-password test need not wait for it.
auth_failure_delay = 0
first_valid_uid = 8
passdb {{
  driver = passwd-file
  args = username_format=%n {dir}/users
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={dir}/mail/%n
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 993
  }}
}}
# The config and users file sit in a root-only temp dir.
service auth {{
  user = root
}}
service auth-worker {{
  user = root
}}
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def port_open(netns: str, host: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    return (
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe], capture_output=True).returncode == 0
    )


def in_browser(netns: str, scenario: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    """Run this file's driver in netns; fail with what the browser saw if it went wrong."""
    scenario = {"screenshots": str(ARTIFACTS), **scenario}
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, __file__, json.dumps(scenario)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, json.dumps(result, indent=2)
    return result


@pytest.fixture(scope="module")
def netns(stacks):
    """A namespace of this test's own: the webmail address on lo, and the frontends' names
    (imap, smtp-out) pointing at loopback through `ip netns exec`'s per-namespace /etc/hosts."""
    stack = stacks["lab"]
    name = f"wmtest-{os.getpid()}"
    etc = Path("/etc/netns") / name
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        address = stack.webmail.address
        ip(
            "-n",
            name,
            "addr",
            "add",
            f"{address}/{address.max_prefixlen}",
            "dev",
            "lo",
            *(["nodad"] * (address.version == 6)),
        )
        etc.mkdir(parents=True)
        names = " ".join(stack.service_name(s) for s in ("imap", "smtp-out"))
        (etc / "hosts").write_text(f"127.0.0.1 localhost {names}\n")
        yield name
    finally:
        left = [
            pid
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            if not zombie(pid)
        ]
        for pid in left:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)
        if Path("/etc/netns").is_dir() and not any(Path("/etc/netns").iterdir()):
            Path("/etc/netns").rmdir()
        assert not left, f"processes left running in {name}: {left}"


@pytest.fixture(scope="module")
def imap(netns, keys):
    keys = keys["lab"]
    # Dovecot's mail processes run as `mail`: its home must be reachable, unlike pytest's 0700 tmp.
    base = Path(tempfile.mkdtemp(prefix="wmtest-imap-"))
    base.chmod(0o711)
    (base / "cert.pem").write_text(keys.tls_cert)
    (base / "key.pem").write_text(keys.tls_key)
    (base / "key.pem").chmod(0o600)
    password = keys.mailbox_passwords[ACCOUNT]
    (base / "users").write_text(f"{ACCOUNT}:{{PLAIN}}{password}\n")
    (base / "users").chmod(0o600)
    maildir = base / "mail" / ACCOUNT / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.lab").write_text(
        f"From: bob@example.com\nTo: {ACCOUNT}@example.com\nSubject: {WELCOME}\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\nMessage-ID: <welcome@example.com>\n\n"
        f"{WELCOME_BODY}\n"
    )
    (base / "mail").chmod(0o711)
    shutil.chown(base / "mail" / ACCOUNT, "mail", "mail")
    for path in (base / "mail" / ACCOUNT).rglob("*"):
        shutil.chown(path, "mail", "mail")
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(name=netns, dir=base))
    subprocess.run(["ip", "netns", "exec", netns, "dovecot", "-c", str(conf)], check=True)
    try:
        deadline = time.monotonic() + 10
        while not port_open(netns, "127.0.0.1", 993):
            assert time.monotonic() < deadline, (base / "dovecot.log").read_text()
            time.sleep(0.1)
        yield {"user": ACCOUNT, "password": password}
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "doveadm", "-c", str(conf), "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def roundcube(netns, stacks, keys, tmp_path_factory):
    wm = webmail.write(tmp_path_factory.mktemp("webmail"), stacks["lab"], keys["lab"], netns)
    started = time.monotonic()
    webmail.start(wm)
    print(f"webmail answered {time.monotonic() - started:.2f} s after start")
    yield wm
    webmail.stop(wm)


def roundcube_config(wm: webmail.Webmail) -> dict[str, Any]:
    """The config as Roundcube itself loads it (defaults, config.inc.php, its includes)."""
    dump = (
        "define('INSTALL_PATH', '/var/lib/roundcube/'); require INSTALL_PATH . 'program/include/clisetup.php';"
        "echo json_encode(rcube::get_instance()->config->all());"
    )
    done = subprocess.run(
        ["php", "-r", dump],
        env={"ROUNDCUBE_CONFIG_DIR": str(wm.path("config")), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


# Root and a network namespace of its own: a lab test, not a unit test.
@pytest.mark.lab
def test_lab_roundcube_serves_the_elastic_login_page(roundcube):
    status, body = webmail.get(roundcube)
    assert status == 200
    assert 'name="_user"' in body and "skins/elastic/" in body


# Root and a network namespace of its own: a lab test, not a unit test.
@pytest.mark.lab
def test_lab_roundcube_runs_with_prods_settings(roundcube, stacks, keys):
    stack, keys = stacks["lab"], keys["lab"]
    config = roundcube_config(roundcube)
    assert config["imap_host"] == f"ssl://{stack.service_name('imap')}:{stack.ports.imaps}"
    assert config["smtp_host"] == f"tls://{stack.service_name('smtp-out')}:{stack.ports.submission}"
    # Submission as the logged-in user: smtp-out's sender map then applies to Roundcube's mail too.
    assert (config["smtp_user"], config["smtp_pass"]) == ("%u", "%p")
    assert config["des_key"] == keys.roundcube_des_key
    assert config["skin"] == "elastic"
    assert config["default_list_mode"] == "threads"
    assert "managesieve" in config["plugins"]
    assert config["managesieve_host"] == f"tls://{stack.service_name('imap')}"
    assert config["db_dsnw"].startswith(f"sqlite:///{roundcube.path('db')}/")
    for name in ("imap_conn_options", "smtp_conn_options", "managesieve_conn_options"):
        assert config[name]["ssl"]["verify_peer"] is True
        assert Path(config[name]["ssl"]["cafile"]).read_text() == keys.ca_cert


# Root and a network namespace of its own: a lab test, not a unit test.
@pytest.mark.lab
def test_lab_roundcube_db_has_roundcubes_schema(roundcube):
    with sqlite3.connect(roundcube.path("db", "sqlite.db")) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
        version = db.execute("select value from system where name = 'roundcube-version'").fetchone()
    assert {"users", "session", "identities", "contacts"} <= tables
    assert version is not None


# Root and a network namespace of its own: a lab test, not a unit test.
@pytest.mark.lab
def test_browser_logs_in_and_reads_the_inbox(roundcube, imap, netns):
    result = in_browser(
        netns,
        {
            "name": "webmail",
            "url": roundcube.url,
            "user": imap["user"],
            "password": imap["password"],
            "open_subject": WELCOME,
        },
    )
    assert "login_error" not in result
    assert WELCOME in result["inbox_subjects"]
    assert WELCOME_BODY in result["opened_body"]
    inbox = ARTIFACTS / "webmail-inbox.png"
    assert inbox.stat().st_size > 10_000 and inbox.read_bytes().startswith(b"\x89PNG")


# Root and a network namespace of its own: a lab test, not a unit test.
@pytest.mark.lab
def test_browser_is_refused_with_a_wrong_password(roundcube, imap, netns):
    result = in_browser(
        netns, {"name": "webmail-refused", "url": roundcube.url, "user": imap["user"], "password": "wrong"}
    )
    assert result["login_error"] == "Login failed."


# ---- through the running lab ------------------------------------------------------------------


def frontend_address(lab: dict[str, Any], stack) -> str:
    """Where the lab serves https://webmail.<domain>: its webmail endpoint, else the primary frontend."""
    endpoint = lab["endpoints"].get("webmail") or lab["endpoints"].get("imaps")
    if endpoint:
        return endpoint["host"]
    frontend = stack.frontend_primary
    return str(frontend.public_ipv4 or frontend.public_ipv6)


@pytest.mark.lab
def test_lab_webmail_allowed_client_reads_and_sends_mail(lab, stacks):
    """From the allow-listed client: https://webmail.<domain> on a frontend, log in, send a
    message to oneself (Roundcube -> smtp-out as `roundcube` -> smtp-in -> maildrop), read it."""
    stack = stacks["lab"]
    account = lab["accounts"][0]
    subject = f"Lab webmail round trip {uuid.uuid4().hex[:8]}"
    body = "Sent by the browser test through the lab's frontends."
    result = in_browser(
        lab["client_netns"],
        {
            "name": "lab-webmail",
            "url": f"https://{stack.service_name('webmail')}/",
            # The name resolves to the frontends; pin the primary so the run is reproducible.
            "resolve": {stack.service_name("webmail"): frontend_address(lab, stack)},
            # The frontends carry the lab's throwaway certificate.
            "accept_insecure_certs": True,
            "user": account["address"],
            "password": account["password"],
            "send": {"to": account["address"], "subject": subject, "body": body},
            "open_subject": subject,
            "delivery_timeout": 60,
        },
    )
    assert "login_error" not in result
    assert result["send_error"] is None
    assert subject in " ".join(result["inbox_subjects"])
    assert body in result["opened_body"]


@pytest.mark.lab
def test_lab_webmail_bounces_everybody_else(lab, stacks):
    """From an address outside webmail.allow, the frontend answers with the redirect only."""
    stack = stacks["lab"]
    other = lab["internet"]["other_client"][0]
    probe = (
        "import http.client, ssl, sys\n"
        f"c = http.client.HTTPSConnection({frontend_address(lab, stack)!r}, 443, timeout=10,"
        f" source_address=({other!r}, 0), context=ssl._create_unverified_context())\n"
        f"c.request('GET', '/', headers={{'Host': {stack.service_name('webmail')!r}}})\n"
        "r = c.getresponse(); print(r.status, r.getheader('Location'))\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", lab["client_netns"], sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    status, location = done.stdout.split()
    assert status == "302" and location == stack.webmail.redirect
