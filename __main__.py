"""mail-cluster: the redundant mail cluster of the IPng case study, as one Pulumi program.

Read the stack config into the model (all errors at once, before any resource exists), then:
one libvirt provider per site, the keys, one component per role (its VMs and the push of each
host's rendered files), and the DNS the cluster needs, as stack outputs.
"""

import gc

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

# A hosting provider's stack (hundreds of domains, thousands of mailboxes) allocates hundreds of
# thousands of objects that live to the end (the model, rendered trees, DNS records): with Python's
# default threshold (700) the cyclic collector ran thousands of times over them, a third of such a
# stack's evaluation (benchmarks/eval.py: 100x warm 1.05 s -> 0.75 s), no less memory. Its garbage
# is freed by reference counting anyway: collect the youngest objects every 10,000 allocations.
gc.set_threshold(10_000, *gc.get_threshold()[1:])

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
