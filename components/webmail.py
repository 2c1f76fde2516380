"""webmail: Roundcube in Docker on an existing host; the program only pushes its compose tree there.

Case study, "Webmail". Files: render/webmail.py, templates/webmail/.
"""

from __future__ import annotations

import pulumi

from components.push import Pushes


class Webmail(pulumi.ComponentResource):
    def __init__(self, pushes: Pushes, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mail:role:Webmail", "webmail", None, opts)
        webmail = pushes.stack.webmail
        self.push = pushes.push(webmail.host, "webmail", webmail, str(webmail.address), parent=self)
        self.register_outputs({"host": webmail.host})
