"""The HTTP API served on the Unix socket (and the optional loopback TCP listener)."""
