"""Log lines rate-limited per key (a uid): a burst per window, then a count of what was dropped.

One user who makes the daemon fail on every write must not fill the disk with its log:
each key may log `burst` lines per `window_s`; further lines are counted, and the next
line that key logs after its window ends is preceded by one line saying how many were
suppressed. The clock is passed in (tests use a fake one). Not a general logging filter:
callers say which key a line belongs to. `Windows` is the count alone, also what limits each
uid's `reject` trace lines (Runtime.reject, `[limits] reject_lines`).
"""
import logging
import time

import attrs

KEYS_MAX = 4096  # keys remembered at once (uids): past it, ended windows are forgotten


@attrs.define
class Window:
    """One key's current window: when it began, lines logged in it, lines suppressed."""

    start: float
    logged: int = 0
    suppressed: int = 0


@attrs.define
class Windows:
    """Per key, at most `burst` admitted in each window of `window_s` on the caller's clock; the rest counted."""

    burst: int = 10
    window_s: float = 60.0
    windows: dict = attrs.Factory(dict)

    def admit(self, key, now: float) -> tuple[bool, Window | None]:
        """Whether `key` may go now; and the key's window that has just ended, if it suppressed any (its
        count is to be told first)."""
        window, ended = self._window(key, now)
        if window.logged >= self.burst:
            window.suppressed += 1
            return False, ended
        window.logged += 1
        return True, ended

    def suppressed(self) -> int:
        """How many the windows still open (or ended and not yet told) have suppressed."""
        return sum(window.suppressed for window in self.windows.values())

    def _window(self, key, now: float) -> tuple[Window, Window | None]:
        """The key's window, a new one once it ended (or the clock went back before it began: the daemon's
        follows the host's); and the ended one if it suppressed any."""
        window = self.windows.get(key)
        if window is not None and 0 <= now - window.start < self.window_s:
            return window, None
        if window is None and len(self.windows) >= KEYS_MAX:
            self._forget_ended(now)
        self.windows[key] = Window(now)
        return self.windows[key], window if window is not None and window.suppressed else None

    def _forget_ended(self, now: float) -> None:
        """Drop keys whose window ended, or all if none has (their counts are lost: memory stays bounded)."""
        self.windows = {key: w for key, w in self.windows.items() if now - w.start < self.window_s}
        if len(self.windows) >= KEYS_MAX:
            self.windows = {}


@attrs.define
class RateLog:
    """`log(key, level, msg, *args)` on `logger`, at most `burst` lines per key per `window_s`."""

    logger: logging.Logger
    burst: int = 10
    window_s: float = 60.0
    clock: object = time.monotonic
    limit: Windows = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.limit = Windows(self.burst, self.window_s)

    def log(self, key, level: int, msg: str, *args) -> bool:
        """Log the line unless `key` has used its burst in this window; whether it was logged."""
        now = self.clock()
        admitted, ended = self.limit.admit(key, now)
        if ended is not None:
            self.logger.warning("%s: %d similar log lines suppressed in %.0f s", key, ended.suppressed,
                                now - ended.start)
        if admitted:
            self.logger.log(level, msg, *args)
        return admitted
