"""Certificate authorities that give mesh proxies their workload identity (docs/identity.md).

- backend.py: the CA interface (``CaManager``), backend settings, workload certificate issuance;
- builtin.py, provided.py: the two backend types;
- material.py: what a CA certificate and key must be, checked once;
- mesh.py: ``MeshCA``, the xDS side's certificate provider (issuing CA and trust per mesh);
- state.py: ``MeshCAState`` and the rotation rule; keeper.py: the component that applies it;
- checks.py: write-time checks of Meshes and Secrets.
"""

from zonemesh.shared.ca.backend import IssuedCert, spiffe_id
from zonemesh.shared.ca.builtin import CaNotYetSynced
from zonemesh.shared.ca.mesh import CaNotReady, MeshCA, MtlsNotEnabled

__all__ = ["CaNotReady", "CaNotYetSynced", "IssuedCert", "MeshCA", "MtlsNotEnabled", "spiffe_id"]
