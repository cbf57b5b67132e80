"""HTTP dates (RFC 9110 5.6.7): IMF-fixdate out, any of the three historical forms in.

Every response carries `Date`, so the current date is formatted once per second and reused:
a response head costs a clock read and a cache hit, not a strftime.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import functools
import time


@functools.lru_cache(maxsize=1024)
def imf_fixdate(seconds: int) -> str:
    """`seconds` since the epoch as an IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".

    Remembered: a track's Last-Modified is formatted once, not at every play of it.
    """
    return email.utils.formatdate(seconds, usegmt=True)


@functools.lru_cache(maxsize=2)
def _this_second(second: int) -> str:
    # Apart from imf_fixdate's cache, which the passing seconds would otherwise flush.
    return email.utils.formatdate(second, usegmt=True)


def now() -> str:
    """The Date header's value for a response sent now."""
    return _this_second(int(time.time()))


def parse(text: str) -> int | None:
    """Seconds since the epoch of an HTTP-date (IMF-fixdate, RFC 850 or asctime form), or None
    for anything else: a conditional header with an invalid date is ignored (RFC 9110 13.1.3)."""
    if len(text) > 64:  # no date is this long; spare the parser a header someone padded
        return None
    parts = email.utils.parsedate_tz(text)
    if parts is None:
        return None
    year, month, day, hour, minute, second = parts[:6]
    try:
        # parsedate_tz takes "36 Nov": a real date or nothing.
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    return calendar.timegm((year, month, day, hour, minute, second)) - (parts[9] or 0)
