"""Command-line entry points: `failoverd` (the daemon) and `failoverctl` (its client)."""
