"""Platform adapters (Discord, Slack, the web playground): thin layers over the core in ``bot``."""
