"""The one web server of the process: /healthz and the local playground (a chat page over the core)."""
