"""failoverd: a local LLM failover daemon."""

__version__ = "0.1.0"
