"""Dovecot pieces shared by the roles that run it: smtp-out (SASL auth only) and maildrop.

Templates: templates/shared/dovecot/ (auth-service.conf.j2, passdb.conf.j2; their variables are
documented at their top).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# The passwd-file holds password hashes: readable by Dovecot's auth processes, nobody else.
USERS_FILE_MODE = 0o640
USERS_FILE_GROUP = "dovecot"


def passwd_file(users: Iterable[str], hashes: Mapping[str, str]) -> str:
    """A Dovecot passwd-file: `user:{SCHEME}hash::::` per user, as `doveadm pw` output is pasted in
    (case study: `pim:{CRYPT}$2y$...::::`); the empty fields take userdb's default_fields."""
    return "".join(f"{user}:{hashes[user]}::::\n" for user in users)
