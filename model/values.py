"""The stack's free-text values, each checked as what it is before it reaches a file.

Every value here lands in a daemon's configuration (Postfix tables, NGINX, compose YAML, cloud-init):
a newline, a pipe or a brace in one of them is configuration of its own. So each is matched whole
(`fullmatch`: a trailing newline never slips through), only text is accepted (a YAML number is not
silently turned into an address), and the error says what was expected instead of a pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Strict

# A DNS label as RFC 1123 allows it (lower case: the stack writes names as they are published).
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"(?:{LABEL}\.)+[a-z]{{2,63}}")
# The local part as Postfix tables and Dovecot take it unquoted: RFC 5322's dot-atom characters,
# lower case. No whitespace, no quotes, no `:`; a leading `|` or `/` is refused below (aliases(5)
# reads those as a command or a file).
LOCAL_PART = r"[a-z0-9!#$%&'*+=?^_`{|}~.-]+"
ADDRESS = re.compile(rf"{LOCAL_PART}@{DNS_NAME.pattern}")
# distribution/reference's grammar: [registry[:port]/]path[:tag][@digest], lower-case path.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)"
IMAGE_REFERENCE = re.compile(
    rf"{_REGISTRY}?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-f0-9]{32,})?"
)
# What may follow the host in a redirect URL: path, query and fragment characters NGINX's `rewrite`
# takes literally. No whitespace, `;`, braces, quotes or `$` (an NGINX variable).
URL_TAIL = re.compile(r"[A-Za-z0-9._~/%?=&+,:@!*()#-]*")
SSH_PUBLIC_KEY = re.compile(
    r"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [\x21-\x7e][\x20-\x7e]*)?"
)
# A password hash after its {SCHEME}: crypt(3) and Argon2 strings. A `:` or whitespace would end
# the passwd-file field early (`user:hash::::`) and start fields or lines of its own.
HASH_TEXT = re.compile(r"[A-Za-z0-9./$=,+-]+")


def is_address(value: str) -> bool:
    return bool(ADDRESS.fullmatch(value)) and not value.startswith(("|", "/"))


def is_dns_name(value: str) -> bool:
    return len(value) <= 253 and bool(DNS_NAME.fullmatch(value))


def _checked(test: Callable[[str], bool], expected: str) -> AfterValidator:
    def check(value: str) -> str:
        if not test(value):
            raise ValueError(f"{value!r} is not {expected}")
        return value

    return AfterValidator(check)


def _https_url(value: str) -> bool:
    if not value.startswith("https://") or not URL_TAIL.fullmatch(value.removeprefix("https://").partition("/")[2]):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    authority = host if port is None else f"{host}:{port}"
    return is_dns_name(host) and parts.netloc == authority and not parts.username


def _text_only(kind: str, example: str) -> BeforeValidator:
    """Refuses anything but text for a network or an address: pydantic would read the number 12345
    as 0.0.48.57."""

    def check(value: Any) -> Any:
        if isinstance(value, str | IPv4Address | IPv6Address | IPv4Network | IPv6Network):
            return value
        raise ValueError(f"{value!r} is not {kind}: write it as text, e.g. {example!r}")

    return BeforeValidator(check)


Text = Annotated[str, Strict()]
Label = Annotated[Text, _checked(lambda v: bool(re.fullmatch(LABEL, v)), "a DNS label (a-z, 0-9 and inner '-')")]
DnsName = Annotated[Text, _checked(is_dns_name, "a domain name")]
Address = Annotated[Text, _checked(is_address, "a mail address (local@domain, lower case)")]
HttpsUrl = Annotated[Text, _checked(_https_url, "an https URL (https://host/path, no spaces, ';', quotes or braces)")]
ImageReference = Annotated[
    Text,
    _checked(lambda v: bool(IMAGE_REFERENCE.fullmatch(v)), "an OCI image reference ([registry/]name[:tag][@digest])"),
]
SshPublicKey = Annotated[
    Text, _checked(lambda v: bool(SSH_PUBLIC_KEY.fullmatch(v)), "an SSH public key on one line (type base64 [comment])")
]

# An image URL or path goes into a remote command's environment and libvirt's volume source:
# URL characters only, no quotes, `$`, `;` or whitespace.
ImageLocation = Annotated[
    Text,
    _checked(
        lambda v: bool(re.fullmatch(r"(?:https://[A-Za-z0-9.-]+(?::[0-9]+)?)?/[A-Za-z0-9._~/%+-]+\.qcow2", v)),
        "an https URL or absolute path of a .qcow2 image",
    ),
]
# What ssh dials: a host name (one or more labels) when it is not an address.
HostName = Annotated[
    Text, _checked(lambda v: len(v) <= 253 and bool(re.fullmatch(rf"(?:{LABEL}\.)*{LABEL}", v)), "a host name")
]
UnixUser = Annotated[Text, _checked(lambda v: bool(re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", v)), "a unix user name")]
CountryCode = Annotated[Text, _checked(lambda v: bool(re.fullmatch(r"[A-Z]{2}", v)), "a two-letter country code (CH)")]
HypervisorUri = Annotated[
    Text,
    _checked(
        lambda v: bool(re.fullmatch(r"qemu(?:\+ssh|\+tls|\+tcp)?://[^\s/]*/system", v)),
        "a libvirt URI (qemu+ssh://user@host/system)",
    ),
]
# Linux interface names: at most 15 characters, no '/', whitespace or ':'.
BridgeName = Annotated[
    Text,
    _checked(lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", v)), "a bridge name (up to 15 of A-Z a-z 0-9 _ . -)"),
]
# What Postfix's reject_rbl_client takes after `=`: one 127.x.y.z answer, its last part a number or [a..b].
DnsblReply = Annotated[
    Text,
    _checked(
        lambda v: bool(re.fullmatch(r"127\.\d+\.\d+\.(?:\d+|\[\d+\.\.\d+\])", v)),
        "a DNSBL listing answer (127.0.0.2 or 127.0.0.[2..11])",
    ),
]

IPv4Addr = Annotated[IPv4Address, _text_only("an IPv4 address", "192.0.2.7")]
IPv6Addr = Annotated[IPv6Address, _text_only("an IPv6 address", "2001:db8::7")]
IPAddr = Annotated[IPv4Address | IPv6Address, _text_only("an IP address", "192.0.2.7")]
IPv4Net = Annotated[IPv4Network, _text_only("an IPv4 network", "192.0.2.0/24")]
IPv6Net = Annotated[IPv6Network, _text_only("an IPv6 network", "2001:db8::/64")]
IPNetwork = Annotated[IPv4Network | IPv6Network, _text_only("a network", "192.0.2.0/24")]
