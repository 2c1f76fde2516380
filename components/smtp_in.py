"""smtp-in: three VMs, each an MX on 25 and 465, with DNSBLs, rspamd, virtual aliases and PostSRSd.

Case study, "Inbound: smtp-in". Files: render/smtp_in.py, templates/smtp_in/.
"""

from __future__ import annotations

from components.vm import VmRole


class SmtpIn(VmRole):
    ROLE = "smtp_in"
    TYPE = "mail:role:SmtpIn"
