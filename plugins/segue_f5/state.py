"""F5 pool-member states: what Segue wants, what F5 accepts as writes, how F5 reads them back.

Pure functions. F5 writes and reads member state with different words: it accepts
``session`` in {user-enabled, user-disabled} and ``state`` in {user-up, user-down}, but reads
back ``session`` as monitor-enabled, user-enabled, user-disabled or addr-disabled and ``state``
as up, down, checking, unchecked, user-down or fqdn-*. Comparing written and read values
directly would report a change forever; comparing logical states does not.
"""

from __future__ import annotations

from typing import Literal

MemberState = Literal["enabled", "disabled", "offline"]

WRITE: dict[str, dict[str, str]] = {
    "enabled": {"session": "user-enabled", "state": "user-up"},
    # Disabled: no new connections; existing and persisted ones continue (graceful drain).
    "disabled": {"session": "user-disabled", "state": "user-up"},
    # Forced offline: no new connections at all; the monitor stops.
    "offline": {"session": "user-disabled", "state": "user-down"},
}

_ENABLED_SESSIONS = {"user-enabled", "monitor-enabled"}
_RUNNING_STATES = {"user-up", "up", "down", "checking", "unchecked", "fqdn-up", "fqdn-down",
                   "fqdn-up-no-addr", "fqdn-checking"}


def read_state(member: dict) -> MemberState:
    """The logical state of a member as F5 reads it back."""
    session = member.get("session", "")
    state = member.get("state", "")
    if state == "user-down" and session == "user-disabled":
        return "offline"
    if session in _ENABLED_SESSIONS and state in _RUNNING_STATES:
        return "enabled"
    return "disabled"


def patch_for(current: dict, desired: MemberState) -> dict[str, str] | None:
    """The PATCH body that moves `current` to `desired`, or None when it is already there."""
    if read_state(current) == desired:
        return None
    return dict(WRITE[desired])


def cur_conns(stats: dict) -> int:
    """serverside.curConns from a member's /stats document (F5's nested entries shape)."""
    for entry in stats.get("entries", {}).values():
        fields = entry.get("nestedStats", {}).get("entries", {})
        value = fields.get("serverside.curConns", {}).get("value")
        if isinstance(value, int):
            return value
    raise ValueError("no serverside.curConns in the member's stats")


def tilde(partition: str, name: str) -> str:
    """F5's URL form of /Partition/name: ~Partition~name (route domains' % escaped)."""
    return f"~{partition}~{name}".replace("%", "%25")
