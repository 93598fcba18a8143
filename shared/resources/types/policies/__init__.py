"""One module per targetRef policy: its schema and its semantic checks.

Each module registers its type with the registry when imported.
"""

from zonemesh.shared.resources.types.policies import meshtimeout  # noqa: F401
