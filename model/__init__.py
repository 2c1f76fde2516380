"""The typed stack model, parsed once from the stack config.

    stack = load_stack(values)          # values: {"hosts": {...}, ...} without the namespace
    stack = load_stack_file("lab")      # Pulumi.lab.yaml, for render and the lab

Both raise StackConfigError naming every bad key before anything else runs.
"""

from model.load import NAMESPACE, StackConfigError, load_stack, load_stack_file, stack_file_values
from model.stack import DebianImage, Domain, Host, Mailbox, RelayClient, Site, Stack, VmShape

__all__ = [
    "NAMESPACE",
    "DebianImage",
    "Domain",
    "Host",
    "Mailbox",
    "RelayClient",
    "Site",
    "Stack",
    "StackConfigError",
    "VmShape",
    "load_stack",
    "load_stack_file",
    "stack_file_values",
]
