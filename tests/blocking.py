"""blockbuster, as the tests use it: every blocking call (file I/O, sleep, sockets, SQLite...) made on the event loop
by the given packages raises ``BlockingError`` — but for the job store's quick path.

``SQLiteJobStore._quick`` runs one-row statements by key on the loop on purpose: the connection never waits for a
lock there (busy timeout 0: a locked database sends the statement to the store's thread) and never checkpoints in
a commit, so such a statement costs ~0.1 ms, half of a hop to a thread and back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from blockbuster import BlockBuster, blockbuster_ctx


@contextlib.contextmanager
def no_blocking_calls(modules: list[str]) -> Iterator[BlockBuster]:
    with blockbuster_ctx(modules) as buster:
        for name, function in buster.functions.items():
            if name.startswith("sqlite3."):
                function.can_block_in("bot/store.py", {"_quick"})
        yield buster
