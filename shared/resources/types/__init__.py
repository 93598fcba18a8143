"""Every resource type, registered on import (one module per type family)."""

from zonemesh.shared.resources.types import mesh, policies, system  # noqa: F401
