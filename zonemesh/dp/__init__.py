"""`zonemesh-dp`: the data plane proxy agent (registers a Dataplane, runs and supervises Envoy)."""
