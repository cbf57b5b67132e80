"""Health: ok, degraded or failing, with a reason for people; its order and its forms.

One leaf module (it imports nothing of Segue) because every room reports health: storage
(shares down), the plugin host (each plugin), the worker pipe (the main process's health), and
the node that adds them up for /healthz, /v1/status, /metrics and systemd's STATUS= line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

HealthStatus = Literal["ok", "degraded", "failing"]
#: Worse is larger.
ORDER: dict[str, int] = {"ok": 0, "degraded": 1, "failing": 2}


@dataclass(frozen=True)
class Health:
    """A plugin's (or the node's) health: ok, degraded (serving, something is wrong) or failing
    (this node should get no traffic), with a reason for people.

    /healthz and /v1/status answer anyone who asks, with no token, so the node's `reason` is
    short and says only what is wrong ("share s2 down", "plugin f5 degraded"), never where or
    who (paths, smb:// URLs, user names, commands). `detail` says all of that, for the logs and
    the host's own STATUS= line. A plugin's own reason is taken as detail: the plugin host gives
    the public reason.
    """

    status: HealthStatus
    reason: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in ORDER:
            raise ValueError(f"health status must be ok, degraded or failing, not {self.status!r}")

    @classmethod
    def ok(cls) -> Health:
        return cls("ok")

    def worse_than(self, other: Health) -> bool:
        return ORDER[self.status] > ORDER[other.status]

    @property
    def described(self) -> str:
        """The detail, or the reason when there is none: what logs and STATUS= say."""
        return self.detail or self.reason

    def to_json(self) -> dict[str, str]:
        """The public form (status and reason; never the detail)."""
        return {"status": self.status, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Any) -> Health:
        """The inverse of to_json; ValueError (or KeyError, TypeError) for anything else."""
        return cls(doc["status"], str(doc["reason"]))


def worst(healths: Iterable[Health]) -> Health:
    """The worst of `healths` (the first of equals), ok if there are none."""
    found = Health.ok()
    for health in healths:
        if health.worse_than(found):
            found = health
    return found
