"""Every resource type, registered on import (one module per type family).

Import order is registration order, which is the order the API (`/_resources`) and zmctl
list types in: Mesh first as Kuma does, then the rest by family.
"""

# isort: off
from zonemesh.shared.resources.types import mesh  # noqa: F401
from zonemesh.shared.resources.types import system  # noqa: F401
from zonemesh.shared.resources.types import policies  # noqa: F401
from zonemesh.shared.resources.types import dataplane  # noqa: F401
from zonemesh.shared.resources.types import externalservice  # noqa: F401
from zonemesh.shared.resources.types import zoneproxy  # noqa: F401
from zonemesh.shared.resources.types import license  # noqa: F401
from zonemesh.shared.resources.types import gateway  # noqa: F401
# isort: on
