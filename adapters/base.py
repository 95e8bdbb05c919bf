"""What every platform adapter offers the run loop: start, stop, and a state for /healthz."""

from __future__ import annotations

import enum
from typing import Protocol


class AdapterState(enum.StrEnum):
    STARTING = "starting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # started, but its platform connection is down (it may reconnect)
    STOPPING = "stopping"
    STOPPED = "stopped"


class PlatformUnreachableError(Exception):
    """The platform could not be reached at start (network, DNS, its outage): ``imagebot run`` retries.
    Any other exception from ``start`` (a refused token, a bad setting) is permanent."""


class Adapter(Protocol):
    """A platform adapter (playground, and later Discord and Slack) run by ``imagebot run``."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> AdapterState: ...

    async def start(self) -> None:
        """Connect and begin taking requests; return once running (the work continues in the background)."""
        ...

    async def stop(self) -> None:
        """Stop taking requests and release the platform connection (running jobs are the run loop's concern)."""
        ...
