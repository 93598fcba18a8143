"""Global creates each mesh's CAs and drives its CA rotations, so that every zone uses one root.

Cross-zone mTLS runs end to end between proxies of different zones: both must trust one CA.
Whenever a Mesh is created or changed on global, the CA of each of its builtin backends
(``{mesh}.ca-builtin-cert-{backend}``, ``{mesh}.ca-builtin-key-{backend}``) is generated here
if missing; KDS then carries them to every zone with the mesh (Secret is a global→zones type),
and federated zones never generate their own (``MeshCA(generate=False)``).

Global also decides each step of a CA rotation from the DataplaneInsights every zone uploads
and publishes it as the mesh's MeshCAState, which zones follow (shared/ca/keeper.py, state.py).
Leader-only (global_cp/app.py): one replica creates CAs and steps rotations, its writes fenced
by its term.
"""

from __future__ import annotations

from zonemesh.shared.ca.keeper import MeshCaKeeper, component

__all__ = ["MeshCaKeeper", "component"]
