"""Growing a VM's disk in place: the libvirt provider can only replace a volume to resize it.

terraform-provider-libvirt v0.8.1 marks `size` ForceNew (libvirt/resource_libvirt_volume.go:36-40),
so a size edit would delete the disk and make an empty one. The disks ignore `size` after they are
built (components/vm.py); this command carries a size edit out instead, on the operator's machine
with the site's own libvirt URI (the provider's connection: same SSH access, same known_hosts):
- a larger size: `virsh blockresize` on the running domain (the guest sees the new size at once;
  cloud-init grows the root filesystem at the next boot, the maildrop's push grows the mail
  filesystem), or `virsh vol-resize` when the domain is not running;
- the same size: nothing (a new VM's disk is made at its size);
- a smaller size: refused, naming the stack key. Shrinking would cut the filesystem.
"""

from __future__ import annotations

import pulumi
import pulumi_command.local as local
import pulumi_libvirt as libvirt

from model import NAMESPACE, Site

GIB = 1024**3

# POSIX sh (pulumi-command's local.Command runs `/bin/sh -c`); 64-bit arithmetic in dash and bash.
RESIZE = r"""set -eu
v() { virsh -q -c "$LIBVIRT_URI" "$@"; }
current=$(v vol-info --pool "$POOL" "$VOLUME" --bytes | awk '$1 == "Capacity:" {print $2}')
if [ -z "$current" ]; then
  echo "$KEY: cannot read the size of volume $VOLUME in pool $POOL" >&2
  exit 1
fi
if [ "$BYTES" -lt "$current" ]; then
  echo "$KEY: $((BYTES / 1073741824)) GiB is smaller than volume $VOLUME" \
    "($((current / 1073741824)) GiB): shrinking is refused" >&2
  exit 1
fi
if [ "$BYTES" -eq "$current" ]; then
  echo "$VOLUME: $((current / 1073741824)) GiB, unchanged"
  exit 0
fi
if [ "$(v domstate "$DOMAIN" 2>/dev/null || true)" = running ]; then
  v blockresize "$DOMAIN" "$(v vol-path --pool "$POOL" "$VOLUME")" "${BYTES}B"
else
  v vol-resize --pool "$POOL" "$VOLUME" "${BYTES}B"
fi
echo "$VOLUME: $((current / 1073741824)) GiB -> $((BYTES / 1073741824)) GiB"
"""


def resize_environment(site: Site, pool: str, volume_name: str, domain: str, gib: int, key: str) -> dict[str, str]:
    """`pool`: the volume's own, from its state (a disk keeps its pool when the site's changes)."""
    return {
        "LIBVIRT_URI": site.hypervisor,
        "POOL": pool,
        "VOLUME": volume_name,
        "DOMAIN": domain,
        "BYTES": str(gib * GIB),
        "KEY": f"{NAMESPACE}:{key}",
    }


class VolumeSize(local.Command):
    """Keeps `volume` at `gib` GiB, growing it in place; re-runs when the size in the stack changes."""

    def __init__(
        self,
        name: str,
        site: Site,
        volume: libvirt.Volume,
        domain: str,
        gib: int,
        key: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            name,
            create=RESIZE,
            environment=pulumi.Output.all(volume.pool, volume.name).apply(
                lambda pool_and_name: resize_environment(site, *pool_and_name, domain, gib, key)
            ),
            triggers=[gib],
            opts=opts,
        )
