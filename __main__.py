"""mail-cluster: the redundant mail cluster of the IPng case study, as one Pulumi program.

Read the stack config into the model (all errors at once, before any resource exists), then:
one libvirt provider per site, the keys, one component per role (its VMs and the push of each
host's rendered files), and the DNS the cluster needs, as stack outputs.
"""

import pulumi

from components import (
    DnsOutputs,
    Frontend,
    Keys,
    Maildrop,
    Pushes,
    RelayClients,
    SmtpIn,
    SmtpOut,
    Webmail,
    endpoints,
    hypervisors,
    read_stack,
)
from model import NAMESPACE

config = pulumi.Config(NAMESPACE)
stack = read_stack(config)

sites = hypervisors(stack)
keys = Keys("keys", stack)
pushes = Pushes(stack, keys.material, config.get_secret("ssh_private_key"))

vm_roles = [
    SmtpOut(pushes, sites),
    SmtpIn(pushes, sites),
    Maildrop(pushes, sites),
    Frontend(pushes, sites),
]
Webmail(pushes)
RelayClients(pushes)
dns = DnsOutputs(stack, keys)

pulumi.export("hosts", [host for role in vm_roles for host in role.hosts])
pulumi.export("endpoints", endpoints(stack, dns))
pulumi.export("dns_records", dns.records)
pulumi.export("dns_zones", dns.zones)
# The SSH host key each push pins, with its fingerprint: what `ssh` shows when it meets the host.
pulumi.export("ssh_host_keys", pushes.host_keys())
# Generated mailbox passwords (mailboxes without a password_hash): a secret output, for the operator.
pulumi.export("mailbox_passwords", keys.material.apply(lambda material: dict(material.mailbox_passwords)))
