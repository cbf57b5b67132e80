"""The admin listener ([http] admin_listen): monitoring on an address of its own.

With it, /metrics and /v1/status are answered there alone, and the players' listener answers
404 for them; /healthz is on both, since load balancers poll the players' address. The node's
main process alone binds it, whatever `[http] workers` says: /metrics adds up every process's
values wherever it is rendered, and /v1/status is the main process's own (its plugins), so one
process suffices and a scrape never lands on a worker that knows less.
"""

from __future__ import annotations

from collections.abc import Iterable

from segue.http.router import Endpoint


class AdminListenError(OSError):
    """The admin listener's address cannot be bound (not the players' address: the message
    for the sysadmin names the other key)."""


#: Served by the admin listener alone once there is one.
MOVED = frozenset({"/metrics", "/v1/status"})
#: Served by both listeners.
SHARED = frozenset({"/healthz"})


def split(endpoints: Iterable[Endpoint], apart: bool) -> tuple[list[Endpoint], list[Endpoint]]:
    """(the players' listener's endpoints, the admin listener's): with `apart` False there is
    no admin listener and the players' listener has them all."""
    every = list(endpoints)
    if not apart:
        return every, []
    return ([e for e in every if e.path not in MOVED],
            [e for e in every if e.path in MOVED | SHARED])
