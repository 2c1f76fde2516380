"""What a real engine does with each resource type: the inputs whose change forces a replacement,
and whether the replacement deletes first. Read from the providers' sources at the versions
requirements.txt pins; every entry cites repository@version:path:line.

- pulumi-libvirt 0.5.4 is terraform-provider-libvirt v0.8.1 bridged by pulumi-terraform-bridge
  v3.99.0 (pulumi/pulumi-libvirt@v0.5.4:provider/go.mod:14-15).
- pulumi-command 1.2.1 is a pulumi-go-provider `infer` provider (pulumi/pulumi-command@v1.2.1).
- pulumi-tls 5.6.x and pulumi-random 4.21.x bridge hashicorp/terraform-provider-tls and
  terraform-provider-random (plugin framework: `RequiresReplace` plan modifiers play ForceNew's
  part). pulumi/pulumi-tls@v5.5.1:provider/shim/go.mod:7 pins terraform-provider-tls at commit
  609226f53114 (after v4.2.1); pulumi/pulumi-random@v4.21.1:provider/go.mod:196 pins
  terraform-provider-random at f8d869dc98d9, which is its tag v3.9.0. The lines cited for tls are
  v4.2.1's (the pinned commit is not in the copy read); no schema line moved in what followed.

Names are the wire names the program's inputs arrive under (camelCase), as the mocks see them.
The engine compares inputs per top-level property; a change anywhere inside a list or object that
is ForceNew as a whole (Domain `disks`) replaces the resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIBVIRT = "dmacvicar/terraform-provider-libvirt@v0.8.1:libvirt"
BRIDGE = "pulumi/pulumi-terraform-bridge@v3.99.0:pkg/tfbridge"
COMMAND = "pulumi/pulumi-command@v1.2.1:provider"
TLS = "hashicorp/terraform-provider-tls@v4.2.1:internal/provider"
RANDOM = "hashicorp/terraform-provider-random@v3.9.0:internal/provider"

# Replacement order.
CREATE_FIRST = "create-first"
DELETE_FIRST = "delete-first"
# Delete-first when the program set the autonamed `name` itself (every libvirt resource here):
# pulumi-libvirt calls SetAutonaming(255, "-") (pulumi/pulumi-libvirt@v0.5.4:provider/resources.go:170),
# which makes every string input called `name` autonamed (BRIDGE/info/autonaming.go:43-63); the
# bridge's Diff asks for delete-before-replace when a replacement is due and an autonamed
# property was not filled in by the autonamer (BRIDGE/provider.go:1247-1248,
# BRIDGE/schema.go:197-247 nameRequiresDeleteBeforeReplace). A volume or domain name is unique
# on the hypervisor, so a create-first replacement could not work anyway.
DELETE_FIRST_IF_NAMED = "delete-first if `name` is set by the program"


@dataclass(frozen=True)
class Behaviour:
    """One resource type as its provider treats a change of inputs."""

    # Inputs whose change replaces the resource; any other changed input is an in-place update.
    replace: frozenset[str]
    order: str
    notes: str
    sources: tuple[str, ...]

    def delete_first(self, inputs: Mapping[str, Any]) -> bool:
        if self.order == DELETE_FIRST_IF_NAMED:
            return inputs.get("name") is not None
        return self.order == DELETE_FIRST


BEHAVIOURS: dict[str, Behaviour] = {
    # resource_libvirt_volume.go:14-19: Create, Read, Delete and no Update; so every input is
    # ForceNew (lines 20-62: name, pool, source, size, format, base_volume_id, base_volume_pool,
    # base_volume_name; xml 63-77).
    "libvirt:index/volume:Volume": Behaviour(
        replace=frozenset(
            {"name", "pool", "source", "size", "format", "baseVolumeId", "baseVolumePool", "baseVolumeName", "xml"}
        ),
        order=DELETE_FIRST_IF_NAMED,
        notes="no Update at all: a bigger `size` is a new, empty volume",
        sources=(f"{LIBVIRT}/resource_libvirt_volume.go:14-77",),
    ),
    # resource_libvirt_cloud_init.go:12-45: Create, Read, Delete; name, pool, user_data,
    # meta_data, network_config all ForceNew (lines 18-43).
    "libvirt:index/cloudInitDisk:CloudInitDisk": Behaviour(
        replace=frozenset({"name", "pool", "userData", "metaData", "networkConfig"}),
        order=DELETE_FIRST_IF_NAMED,
        notes="a new seed ISO; the guest's cloud-init reads it again only for a new instance-id",
        sources=(f"{LIBVIRT}/resource_libvirt_cloud_init.go:12-45",),
    ),
    # resource_libvirt_domain.go schema (lines 46-479): ForceNew at the top level are name (46),
    # description (51), vcpu (61), memory (67), firmware (73), type (78), nvram (84),
    # coreos_ignition (119), fw_cfg_name (125), filesystem (131), disk (158), graphics (251),
    # cpu (343), cmdline (408); console (303), tpm (424) and xml (465) through ForceNew fields
    # inside them. Not ForceNew: metadata, running, cloudinit (114-118), network_interface
    # (194-250, none of its fields), video, autostart, machine, arch, boot_device, emulator,
    # kernel, initrd, qemu_agent (417-423).
    # Update (664-760) starts a stopped domain, swaps the cloud-init disk live (688-710), sets
    # autostart (712-722), and for a network_interface rewrites only hostname/addresses/mac in a
    # libvirt *network's* DHCP table, and only when the NIC has a network_id (725-760): a NIC on a
    # `bridge` has none. So a bridge change is an "update" that changes nothing on the running VM.
    "libvirt:index/domain:Domain": Behaviour(
        replace=frozenset(
            {
                "name",
                "description",
                "vcpu",
                "memory",
                "firmware",
                "type",
                "nvram",
                "coreosIgnition",
                "fwCfgName",
                "filesystems",
                "disks",
                "graphics",
                "consoles",
                "cpu",
                "cmdlines",
                "tpm",
                "xml",
            }
        ),
        order=DELETE_FIRST_IF_NAMED,
        notes=(
            "memory, vcpu and disks replace the VM; networkInterfaces (bridge) and cloudinit are in-place "
            "updates, and a bridge change does nothing to the running VM"
        ),
        sources=(f"{LIBVIRT}/resource_libvirt_domain.go:46-479", f"{LIBVIRT}/resource_libvirt_domain.go:664-760"),
    ),
    # The provider resource: the bridge's DiffConfig replaces a provider only for config keys
    # marked ForcesProviderReplace (BRIDGE/provider.go:824-835, 837-876); pulumi-libvirt marks
    # none (its `uri`: libvirt/provider.go:12-18), so a changed uri is an update.
    "pulumi:providers:libvirt": Behaviour(
        replace=frozenset(),
        order=CREATE_FIRST,
        notes="uri change: update (no ForcesProviderReplace)",
        sources=(f"{BRIDGE}/provider.go:824-876", f"{LIBVIRT}/provider.go:12-18"),
    ),
    # remote.Command: only `triggers` is replaceOnChanges (provider/pkg/provider/common/inputs.go:10,
    # schema.json:284-291); stdin, connection (remote/command.go:44-48), create, update, delete
    # (common/inputs.go:12-14) update in place: Update runs `update`, or `create` again when there
    # is none (remote/commandController.go:63-83). Command implements no custom Diff
    # (commandController.go:26-28), so infer's default diff replaces create-first; Delete runs
    # `delete` if set (commandController.go:86-92).
    "command:remote:Command": Behaviour(
        replace=frozenset({"triggers"}),
        order=CREATE_FIRST,
        notes="an update without `update` runs `create` again",
        sources=(
            f"{COMMAND}/pkg/provider/common/inputs.go:10-14",
            f"{COMMAND}/pkg/provider/remote/command.go:37-49",
            f"{COMMAND}/pkg/provider/remote/commandController.go:26-92",
        ),
    ),
    # local.Command: the same ResourceInputs (local/command.go:45-48, common/inputs.go:10); its
    # Update also runs `create` again when there is no `update` (local/commandController.go:67-90).
    "command:local:Command": Behaviour(
        replace=frozenset({"triggers"}),
        order=CREATE_FIRST,
        notes="as remote.Command: an update without `update` runs `create` again",
        sources=(
            f"{COMMAND}/pkg/provider/local/command.go:45-48",
            f"{COMMAND}/pkg/provider/common/inputs.go:10",
            f"{COMMAND}/pkg/provider/local/commandController.go:67-90",
        ),
    ),
    # resource_private_key.go:57-84: algorithm, rsa_bits, ecdsa_curve RequiresReplace; Update is
    # a no-op (270-272: "changes to this resource will force a re-create").
    "tls:index/privateKey:PrivateKey": Behaviour(
        replace=frozenset({"algorithm", "rsaBits", "ecdsaCurve"}),
        order=CREATE_FIRST,
        notes="a new key: everything that embeds it changes",
        sources=(f"{TLS}/resource_private_key.go:57-84",),
    ),
    # resource_self_signed_cert.go:52-320: private_key_pem (requireReplaceIfStateContainsPEMString),
    # validity_period_hours, allowed_uses, dns_names, ip_addresses, uris, is_ca_certificate,
    # max_path_length, set_subject_key_id, set_authority_key_id, subject (241-320) replace;
    # early_renewal_hours (127-141) does not; ModifyPlan (480) also replaces once the certificate
    # is ready for renewal.
    "tls:index/selfSignedCert:SelfSignedCert": Behaviour(
        replace=frozenset(
            {
                "privateKeyPem",
                "validityPeriodHours",
                "allowedUses",
                "dnsNames",
                "ipAddresses",
                "uris",
                "isCaCertificate",
                "maxPathLength",
                "setSubjectKeyId",
                "setAuthorityKeyId",
                "subject",
            }
        ),
        order=CREATE_FIRST,
        notes="also replaced when a run falls in its early-renewal window",
        sources=(f"{TLS}/resource_self_signed_cert.go:52-320", f"{TLS}/resource_self_signed_cert.go:480"),
    ),
    # resource_cert_request.go:43-200: private_key_pem, dns_names, ip_addresses, uris, subject.
    "tls:index/certRequest:CertRequest": Behaviour(
        replace=frozenset({"privateKeyPem", "dnsNames", "ipAddresses", "uris", "subject"}),
        order=CREATE_FIRST,
        notes="",
        sources=(f"{TLS}/resource_cert_request.go:43-200",),
    ),
    # resource_locally_signed_cert.go:51-148: ca_cert_pem, ca_private_key_pem, cert_request_pem,
    # validity_period_hours, allowed_uses, is_ca_certificate, max_path_length,
    # set_subject_key_id; early_renewal_hours (128) does not; ModifyPlan (308-310) renews.
    "tls:index/locallySignedCert:LocallySignedCert": Behaviour(
        replace=frozenset(
            {
                "caCertPem",
                "caPrivateKeyPem",
                "certRequestPem",
                "validityPeriodHours",
                "allowedUses",
                "isCaCertificate",
                "maxPathLength",
                "setSubjectKeyId",
            }
        ),
        order=CREATE_FIRST,
        notes="also replaced when a run falls in its early-renewal window",
        sources=(f"{TLS}/resource_locally_signed_cert.go:51-148", f"{TLS}/resource_locally_signed_cert.go:308-310"),
    ),
    # resource_password.go:570-720 (schema V3, 557): keepers (RequiresReplaceIfValuesNotNull), length,
    # special, upper, lower, number, numeric, min_numeric, min_upper, min_lower, min_special,
    # override_special.
    "random:index/randomPassword:RandomPassword": Behaviour(
        replace=frozenset(
            {
                "keepers",
                "length",
                "special",
                "upper",
                "lower",
                "number",
                "numeric",
                "minNumeric",
                "minUpper",
                "minLower",
                "minSpecial",
                "overrideSpecial",
            }
        ),
        order=CREATE_FIRST,
        notes="a new password",
        sources=(f"{RANDOM}/resource_password.go:570-720",),
    ),
    # resource_string.go:368-518 (schema V3): the same fields.
    "random:index/randomString:RandomString": Behaviour(
        replace=frozenset(
            {
                "keepers",
                "length",
                "special",
                "upper",
                "lower",
                "number",
                "numeric",
                "minNumeric",
                "minUpper",
                "minLower",
                "minSpecial",
                "overrideSpecial",
            }
        ),
        order=CREATE_FIRST,
        notes="a new string",
        sources=(f"{RANDOM}/resource_string.go:368-518",),
    ),
}


class UnknownResourceType(KeyError):
    """A resource type with no entry here: read its provider's source and add one."""


def behaviour(typ: str) -> Behaviour:
    try:
        return BEHAVIOURS[typ]
    except KeyError:
        raise UnknownResourceType(f"{typ}: no provider behaviour recorded in blast_radius/providers.py") from None
