"""Certificate authorities that give mesh proxies their workload identity."""

from zonemesh.shared.ca.builtin import (
    BuiltinCA,
    CaBundle,
    MtlsNotEnabled,
    WorkloadCert,
    spiffe_id,
)

__all__ = ["BuiltinCA", "CaBundle", "MtlsNotEnabled", "WorkloadCert", "spiffe_id"]
