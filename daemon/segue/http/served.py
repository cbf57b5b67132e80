"""How a track's stream ended: what plugins' play reporting hears (`segue_track_served`).

The track endpoint hands its body writer to `reporting`, which counts the bytes given to the
connection and, once the body ends however it ends, tells `report(bytes_sent, outcome)`:

    complete  every byte of the track was sent
    partial   a range, less than the whole track, was sent to its end
    aborted   the player went away or stopped reading (a send failed or timed out), or the
              node stopped (cancelled)
    error     the node could not go on (no copy of a chunk could be read or verified)

`report` must not wait or raise: the node's reporter only puts the event in a bounded queue,
so that no plugin ever sits on a stream's path.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from segue.http.connection import BodyPart
from segue.http.messages import BodyWriter, Send

OUTCOMES = ("complete", "partial", "aborted", "error")

#: What the node gives the track endpoint: (track id, user, bytes sent, outcome); never waits.
Reporter = Callable[[str, str, int, str], None]


async def reporting(body: BodyWriter, send: Send, *, whole: bool,
                    report: Callable[[int, str], None]) -> None:
    """Run `body` on `send`, then `report` the bytes it sent and how it ended (`whole`: the
    body is the whole track, so a body sent to its end is "complete", not "partial")."""
    sent = 0
    send_failed = False

    async def counted(part: BodyPart) -> None:
        nonlocal sent, send_failed
        try:
            await send(part)
        except BaseException:
            send_failed = True
            raise
        sent += len(part)

    outcome = "error"
    try:
        await body(counted)
        outcome = "complete" if whole else "partial"
    except trio.Cancelled:
        outcome = "aborted"
        raise
    except BaseException:
        outcome = "aborted" if send_failed else "error"
        raise
    finally:
        report(sent, outcome)
