"""zmctl: the command-line client of the zonemesh HTTP API (kumactl-compatible where it can be).

Modules, from the outside in: ``main`` (argument parsing, dispatch, exit codes), ``commands``
(one function per command), ``client`` (HTTP over urllib), ``config`` (the control planes
zmctl knows, in ``~/.zmctl/config.yaml``), ``output`` (pure formatting: tables, YAML, JSON).
"""
