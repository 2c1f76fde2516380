"""frontend: the NGINX VMs balancing 587, 993 and 4190 onto smtp-out and the maildrops, and serving webmail.

Case study, the NGINX stream snippets and "Webmail". Files: render/frontend.py, templates/frontend/.
"""

from __future__ import annotations

from components.vm import VmRole


class Frontend(VmRole):
    ROLE = "frontend"
    TYPE = "mail:role:Frontend"
