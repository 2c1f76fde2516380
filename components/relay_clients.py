"""Relay clients: existing servers that send through smtp-out with opensmtpd; the program pushes their config.

Case study, the opensmtpd example on squanchy. Files: render/relay_client.py, templates/relay_client/.
"""

from __future__ import annotations

import pulumi

from components.push import Pushes


class RelayClients(pulumi.ComponentResource):
    def __init__(self, pushes: Pushes, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mail:role:RelayClients", "relay-clients", None, opts)
        self.pushes = {
            client.name: pushes.push(client.name, "relay_client", client, str(client.address), parent=self)
            for client in pushes.stack.relay_clients
        }
        self.register_outputs({"hosts": list(self.pushes)})
