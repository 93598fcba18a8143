"""Resource model, registry and validation.

Importing this package registers every resource type (see `types/`).
"""

from zonemesh.shared.resources import types as _types  # noqa: F401  (registers the types)
from zonemesh.shared.resources.model import Resource, ResourceKey
from zonemesh.shared.resources.registry import REGISTRY, ResourceType, Scope, Sync

__all__ = ["REGISTRY", "Resource", "ResourceKey", "ResourceType", "Scope", "Sync"]
