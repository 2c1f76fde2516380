"""smtp-out: three VMs taking submission on 587 (STARTTLS + SASL), signing with OpenDKIM, relaying out.

Case study, "Outbound: smtp-out". Files: render/smtp_out.py, templates/smtp_out/.
"""

from __future__ import annotations

from components.vm import VmRole


class SmtpOut(VmRole):
    ROLE = "smtp_out"
    TYPE = "mail:role:SmtpOut"
