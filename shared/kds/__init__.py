"""KDS pieces both control planes use: the wire codec, a store snapshot, and the stream session."""
