"""The packaged defaults: settings.toml (every non-secret setting and the model capability table)."""
