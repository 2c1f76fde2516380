"""maildrop: the primary and the backup mail store, Dovecot (LMTP, IMAP, Sieve) replicating with dsync.

Case study, "Maildrop". Files: render/maildrop.py, templates/maildrop/.
"""

from __future__ import annotations

from components.vm import VmRole


class Maildrop(VmRole):
    ROLE = "maildrop"
    TYPE = "mail:role:Maildrop"
