"""Dovecot pieces shared by the roles that run it: smtp-out (SASL auth only) and maildrop.

Templates: templates/shared/dovecot/ (auth-service.conf.j2, passdb.conf.j2, passwd-file.j2; their
variables are documented at their top).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from render.templates import environment

# The passwd-file holds password hashes: readable by Dovecot's auth processes, nobody else.
# Dovecot re-reads it when it changes: no reload needed.
USERS_FILE_MODE = 0o640
USERS_FILE_GROUP = "dovecot"


def passwd_file(users: Iterable[str], hashes: Mapping[str, str]) -> str:
    """The passwd-file text for `users`, with their hashes (KeyMaterial.password_hashes)."""
    return environment().get_template("shared/dovecot/passwd-file.j2").render(users={u: hashes[u] for u in users})
