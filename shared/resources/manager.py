"""The resource manager: the rules that sit between the API and the store.

The store only stores. The manager knows the control plane's mode and enforces what a
write means: the mesh must exist, origin labels are stamped (both label sets, after checking what
the document said in them: shared/resources/labels.py), types synced from global are read-only
on a federated zone (and zone-provided types on global), and of the types both create
(policies, MeshGateway) each copy is read-only where it was not created; creating a mesh creates
its default policies (seed 002), deleting a mesh deletes everything it owns.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from enum import StrEnum

import structlog
from zonemesh.shared.resources.defaults import default_policies
from zonemesh.shared.resources.labels import write_errors
from zonemesh.shared.resources.model import (
    ORIGIN_GLOBAL,
    ORIGIN_LABEL,
    ORIGIN_ZONE,
    ZONE_LABEL,
    Resource,
    ResourceKey,
    drop_label,
    set_label,
)
from zonemesh.shared.resources.registry import REGISTRY, ResourceType, Scope, Sync
from zonemesh.shared.resources.schema import FieldError, ValidationError
from zonemesh.shared.store import AlreadyExists, ListFilter, ListResult, NotFound, Store

log = structlog.get_logger(__name__)


class Mode(StrEnum):
    GLOBAL = "global"
    ZONE = "zone"
    STANDALONE = "standalone"


class ReadOnly(Exception):
    """A write that this control plane must refuse (the resource is owned elsewhere)."""


def _where(rtype: ResourceType) -> str:
    return "the global control plane" if rtype.synced_down else "the zone control plane that owns it"


class ResourceManager:
    def __init__(self, store: Store, *, mode: Mode = Mode.STANDALONE, zone: str = "") -> None:
        self.store = store
        self.mode = mode
        self.zone = zone

    # -- reads ---------------------------------------------------------------------------

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        return await self.store.get(type, name, mesh)

    async def list(
        self,
        type: str,
        mesh: str | None = None,
        *,
        filter: ListFilter | None = None,
        offset: str | None = None,
        size: int | None = None,
    ) -> ListResult:
        return await self.store.list(type, mesh, filter=filter or ListFilter(), offset=offset, size=size)

    # -- write rules ---------------------------------------------------------------------

    def check_writable(self, rtype: ResourceType) -> None:
        """Refuse writes through the API that this control plane does not own."""
        if rtype.system:
            raise ReadOnly(f"{rtype.name} is written by the control plane itself and cannot be changed through the API")
        if self.mode is Mode.ZONE and rtype.sync & Sync.GLOBAL_TO_ZONES and not rtype.sync & Sync.ZONE_TO_GLOBAL:
            raise ReadOnly(
                f"{rtype.name} is synced from the global control plane to this zone and is read-only here; "
                "apply it on the global control plane"
            )
        if self.mode is Mode.GLOBAL and rtype.synced_up and not rtype.synced_down:
            raise ReadOnly(
                f"{rtype.name} is synced up from zones and is read-only on global; change it on {_where(rtype)}"
            )

    def check_owned(self, existing: Resource) -> None:
        """Refuse an API write to a stored resource this control plane did not create: a copy KDS
        keeps of a resource of the other side (a type both create), or of another zone's."""
        rtype = REGISTRY.get(existing.type)
        zone = existing.labels.get(ZONE_LABEL, "")
        what = f"{existing.type} {existing.name!r}"
        if existing.display_name != existing.name:
            what += f" ({existing.display_name!r} where it was created)"
        if self.mode is Mode.GLOBAL and existing.origin == ORIGIN_ZONE:
            raise ReadOnly(
                f"{what} was created on zone {zone!r} and is read-only on global: change or delete it "
                f"on the control plane of zone {zone!r}"
            )
        if self.mode is Mode.ZONE and existing.origin == ORIGIN_GLOBAL and rtype.synced_down:
            raise ReadOnly(
                f"{what} is synced from the global control plane to this zone and is read-only here; "
                "change it on the global control plane"
            )
        if self.mode is Mode.ZONE and existing.origin == ORIGIN_ZONE and zone not in ("", self.zone):
            raise ReadOnly(f"{what} belongs to zone {zone!r} and is read-only here; change it on that zone")

    def _check_labels(self, res: Resource) -> None:
        errors = write_errors(res, REGISTRY.get(res.type), self.mode.value, self.zone)
        if errors:
            raise ValidationError(errors, title="Invalid labels")

    def _stamp(self, res: Resource) -> None:
        """Stamp origin labels (zonemesh.io and Kuma's): where a resource was created, for KDS and users."""
        if self.mode is Mode.GLOBAL:
            set_label(res.labels, ORIGIN_LABEL, ORIGIN_GLOBAL)
            drop_label(res.labels, ZONE_LABEL)
        elif self.mode is Mode.ZONE:
            set_label(res.labels, ORIGIN_LABEL, ORIGIN_ZONE)
            set_label(res.labels, ZONE_LABEL, self.zone)

    async def _check_write(self, res: Resource, stored: Resource | None) -> None:
        """The type's write-time checks: its own (``write_check``), against its mesh
        (``mesh_check``), then against what else is stored (``store_check``, reading the store)."""
        rtype = REGISTRY.get(res.type)
        if rtype.write_check is not None:
            errors = rtype.write_check(res)
            if errors:
                raise ValidationError(errors)
        if rtype.scope is Scope.MESH:
            mesh = await self.store.find("Mesh", res.mesh)
            if mesh is None:
                raise ValidationError(
                    [FieldError("mesh", f"mesh {res.mesh!r} does not exist; create it first")],
                    title="Mesh not found",
                )
            if rtype.mesh_check is not None:
                errors = rtype.mesh_check(res, mesh)
                if errors:
                    raise ValidationError(errors)
        if rtype.store_check is not None:
            errors = await rtype.store_check(res, stored, self.store)
            if errors:
                raise ValidationError(errors)

    # -- writes --------------------------------------------------------------------------

    async def create(self, res: Resource) -> Resource:
        self._check_labels(res)
        await self._check_write(res, None)
        self._stamp(res)
        created = await self.store.create(res)
        if created.type == "Mesh" and self.mode is not Mode.ZONE:
            # On a federated zone the defaults arrive from global with the mesh.
            await self._create_default_policies(created)
        log.info("resource_created", resource=str(created.key), version=created.version)
        return created

    async def update(self, res: Resource, stored: Resource | None = None) -> Resource:
        """``stored``: the version read before (``apply`` has it), else it is read here when the
        type's store check needs it."""
        self._check_labels(res)
        rtype = REGISTRY.get(res.type)
        if stored is None and rtype.store_check is not None:
            stored = await self.store.find(res.type, res.name, res.mesh)
        await self._check_write(res, stored)
        self._stamp(res)
        updated = await self.store.update(res)
        log.info("resource_updated", resource=str(updated.key), version=updated.version)
        return updated

    async def apply(self, res: Resource, version: int | None = None) -> tuple[Resource, bool]:
        """Create or update. ``version`` (when given) is the version the caller read: a stale
        one makes the update fail with Conflict. Returns (resource, created)."""
        existing = await self.store.find(res.type, res.name, res.mesh)
        if existing is None:
            return await self.create(res), True
        self.check_owned(existing)
        res.version = existing.version if version is None else version
        return await self.update(res, existing), False

    async def upsert_batch(
        self, resources: Sequence[Resource], *, expected: Mapping[ResourceKey, int] | None = None
    ) -> Sequence[Resource]:
        """Create or update ``resources`` in one store batch: for what the control plane alone writes
        (insights), many at a time. Without version checks, but for the keys of ``expected`` (the
        versions the caller read, 0: absent; ``Conflict`` otherwise: ``Store.batch``). Each mesh is
        looked up once; the resources whose mesh does not exist are left out and returned."""
        meshes: dict[str, Resource | None] = {}
        kept: builtins.list[Resource] = []  # (``list`` is a method of this class)
        homeless: builtins.list[Resource] = []
        for res in resources:
            self._check_labels(res)
            rtype = REGISTRY.get(res.type)
            errors = rtype.write_check(res) if rtype.write_check is not None else []
            if errors:
                raise ValidationError(errors)
            if rtype.scope is Scope.MESH:
                if res.mesh not in meshes:
                    meshes[res.mesh] = await self.store.find("Mesh", res.mesh)
                mesh = meshes[res.mesh]
                if mesh is None:
                    homeless.append(res)
                    continue
                errors = rtype.mesh_check(res, mesh) if rtype.mesh_check is not None else []
                if errors:
                    raise ValidationError(errors)
            self._stamp(res)
            kept.append(res)
        if kept:
            checked = {res.key for res in kept}
            await self.store.batch(
                upserts=kept, expected={k: v for k, v in (expected or {}).items() if k in checked} or None
            )
        return homeless

    async def delete(self, type: str, name: str, mesh: str = "", *, version: int | None = None) -> Resource:
        stored = await self.store.get(type, name, mesh)
        self.check_owned(stored)
        check = REGISTRY.get(type).delete_check
        if check is not None:
            errors = await check(stored, self.store)
            if errors:
                raise ValidationError(errors, title=f"{type} {name!r} is in use")
        if type == "Mesh":
            await self._delete_mesh_contents(name)
        deleted = await self.store.delete(type, name, mesh, version=version)
        log.info("resource_deleted", resource=str(deleted.key))
        return deleted

    async def _create_default_policies(self, mesh: Resource) -> None:
        skip = mesh.spec.get("skipCreatingInitialPolicies") or []
        policies = [p for p in default_policies(mesh.name) if "*" not in skip and p.name not in skip]
        for policy in policies:
            self._stamp(policy)
        await self.store.batch(upserts=policies)
        log.info("mesh_defaults_created", mesh=mesh.name, policies=[p.name for p in policies])

    async def _delete_mesh_contents(self, mesh: str) -> None:
        if await self.store.find("Mesh", mesh) is None:
            raise NotFound(ResourceKey("Mesh", "", mesh))
        owned: list[ResourceKey] = []
        for rtype in REGISTRY.mesh_scoped():
            owned += [r.key for r in (await self.store.list(rtype.name, mesh)).items]
        await self.store.batch(deletes=owned)
        log.info("mesh_contents_deleted", mesh=mesh, count=len(owned))

    async def ensure_default_mesh(self) -> bool:
        """Create the `default` mesh (with its default policies) if missing. Returns True if created."""
        if await self.store.find("Mesh", "default") is not None:
            return False
        try:
            await self.create(Resource(type="Mesh", name="default"))
        except AlreadyExists:  # created by another replica on the same store meanwhile
            return False
        return True
