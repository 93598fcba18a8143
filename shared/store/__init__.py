"""Stores: the async Store protocol and its backends (memory, sqlite, etcd)."""

from zonemesh.shared.store.base import (
    AlreadyExists,
    Conflict,
    Event,
    EventKind,
    InvalidOffset,
    ListFilter,
    ListResult,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    Watch,
)
from zonemesh.shared.store.factory import open_store

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Event",
    "EventKind",
    "InvalidOffset",
    "ListFilter",
    "ListResult",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Watch",
    "open_store",
]
