"""The zone control plane's xDS side: Envoy configuration for the proxies of this zone.

- ``generators/``: pure functions Dataplane + MeshContext -> Envoy resources (ResourceSet);
- ``policies/``: one module per targetRef policy, applying it to those resources;
- ``cache.py``: versioned per-proxy snapshots, pre-serialized, with watches;
- ``server.py``: the ADS gRPC servicer (State of the World, SDS over ADS) speaking only to the cache;
- ``reconciler.py``: store changes -> regenerate the affected proxies -> cache;
- ``component.py``: how the zone control plane runs all of it (and the ``_config`` API route).
"""
