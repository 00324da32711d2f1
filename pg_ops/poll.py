"""Waiting under a deadline: the one loop pg_ops polls with (a member coming up, WAL reaching
the archive, a pod going away)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
def poll(attempt: Callable[[], T | None], *, timeout: float, interval: float,
         expired: Callable[[], BaseException]) -> T: ...


@overload
def poll(attempt: Callable[[], T | None], *, timeout: float, interval: float,
         expired: None = None) -> T | None: ...


def poll(attempt: Callable[[], T | None], *, timeout: float, interval: float,
         expired: Callable[[], BaseException] | None = None) -> T | None:
    """Call `attempt()` every `interval` seconds until it returns something other than None, and
    return that. It is always called at least once, and it may raise to stop early (a member
    that exited). Once `timeout` seconds have passed: raise `expired()` (built then, so it can
    say what was seen last), or return None when there is none."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            if expired is None:
                return None
            raise expired()
        time.sleep(interval)
