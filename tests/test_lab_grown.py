"""A grown lab stack (dozens of domains, hundreds of mailboxes) comes up and delivers to a random alias.

The lab stack plus DOMAINS signing domains with ALIASES aliases each and MAILBOXES mailboxes with
hashes, written as a stack file and brought up with `lab up --stack <file>` under this test's own
MAIL_LAB_ID (the session's + "grown"): one message from the internet to a random alias of a random
added domain must land in its mailbox on the primary maildrop. Taken down at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from model import NAMESPACE, stack_file_values
from tests.conftest import ROOT, lab_unavailable

pytestmark = pytest.mark.lab

DOMAINS, ALIASES, MAILBOXES = 30, 10, 300
PRIMARY = "maildrop0-chbtl0"


def grown_values() -> dict:
    values = stack_file_values("lab")
    hashed = "{BLF-CRYPT}" + bcrypt.hashpw(b"grown", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    names = [f"grown{n}" for n in range(MAILBOXES)]
    values["mailboxes"] = [*values["mailboxes"], *({"name": n, "password_hash": hashed} for n in names)]
    values["domains"] = [
        *values["domains"],
        *(
            {
                "name": f"customer{d}.example",
                "dkim": [{"selector": "mail"}],
                # postmaster first: every domain must have one (RFC 5321, model.rules).
                "aliases": {
                    ("postmaster" if k == 0 else f"alias{k}"): [names[(d * ALIASES + k) % MAILBOXES]]
                    for k in range(ALIASES)
                },
            }
            for d in range(DOMAINS)
        ),
    ]
    return values


def _lab(lab_id: str, *argv: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAIL_LAB_ID": lab_id}
    return subprocess.run(
        [sys.executable, "-m", "lab", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _stored(lab_id: str, user: str) -> int:
    """Messages in the user's INBOX on the primary maildrop of that lab (doveadm inside the host)."""
    code = (
        "from lab import cluster; import sys; "
        f"r = cluster.host_roots()[{PRIMARY!r}].run(['doveadm', 'mailbox', 'status', '-u', sys.argv[1], "
        "'messages', 'INBOX']); print(r.stdout)"
    )
    env = {**os.environ, "MAIL_LAB_ID": lab_id}
    out = subprocess.run([sys.executable, "-c", code, user], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    return int(out.split("messages=")[1].split()[0]) if "messages=" in out else 0


def test_a_grown_lab_delivers_to_a_random_alias():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab_id = os.environ.get("MAIL_LAB_ID", "") + "grown"
    (ROOT / "artifacts").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="grown-", dir=ROOT / "artifacts"))
    values = grown_values()
    stack_file = workdir / "Pulumi.grown.yaml"
    stack_file.write_text(yaml.safe_dump({"config": {f"{NAMESPACE}:{k}": v for k, v in values.items()}}))
    try:
        up = _lab(lab_id, "up", "--stack", str(stack_file))
        assert up.returncode == 0, up.stderr[-3000:]
        status = json.loads(_lab(lab_id, "status", "--json").stdout)
        assert len(status["hosts"]) >= 13 and status["up"]
        domain = random.choice(values["domains"][-DOMAINS:])
        local, targets = random.choice(sorted(domain["aliases"].items()))
        mx = next(m["host"] for m in status["endpoints"]["mx"] if ":" not in m["host"])
        before = _stored(lab_id, targets[0])
        recipient = f"{local}@{domain['name']}"
        subject = f"Subject: to a random alias, {recipient}"
        sent = _lab(
            lab_id, "client", "swaks", "--server", mx, "--from", "carol@remote.test", "--to", recipient,
            "--header", subject, timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0 and "250 2.0.0 Ok: queued" in sent.stdout, sent.stdout[-2000:] + sent.stderr
        deadline = time.monotonic() + 60
        while _stored(lab_id, targets[0]) <= before:
            assert time.monotonic() < deadline, f"{recipient} -> {targets[0]}: not stored on {PRIMARY} after 60 s"
            time.sleep(1)
    finally:
        _lab(lab_id, "down")
        shutil.rmtree(workdir, ignore_errors=True)
