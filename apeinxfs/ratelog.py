"""Log lines rate-limited per key (a uid): a burst per window, then a count of what was dropped.

One user who makes the daemon fail on every write must not fill the disk with its log:
each key may log `burst` lines per `window_s`; further lines are counted, and the next
line that key logs after its window ends is preceded by one line saying how many were
suppressed. The clock is passed in (tests use a fake one). Not a general logging filter:
callers say which key a line belongs to.
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
class RateLog:
    """`log(key, level, msg, *args)` on `logger`, at most `burst` lines per key per `window_s`."""

    logger: logging.Logger
    burst: int = 10
    window_s: float = 60.0
    clock: object = time.monotonic
    windows: dict = attrs.Factory(dict)

    def log(self, key, level: int, msg: str, *args) -> bool:
        """Log the line unless `key` has used its burst in this window; whether it was logged."""
        window = self._window(key)
        if window.logged >= self.burst:
            window.suppressed += 1
            return False
        window.logged += 1
        self.logger.log(level, msg, *args)
        return True

    def _window(self, key) -> Window:
        """The key's window, a new one (after reporting what the old one suppressed) once it ended."""
        now = self.clock()
        window = self.windows.get(key)
        if window is not None and now - window.start < self.window_s:
            return window
        if window is not None and window.suppressed:
            self.logger.warning("%s: %d similar log lines suppressed in %.0f s", key, window.suppressed,
                                now - window.start)
        if window is None and len(self.windows) >= KEYS_MAX:
            self._forget_ended(now)
        self.windows[key] = Window(now)
        return self.windows[key]

    def _forget_ended(self, now: float) -> None:
        """Drop keys whose window ended, or all if none has (their counts are lost: memory stays bounded)."""
        self.windows = {key: w for key, w in self.windows.items() if now - w.start < self.window_s}
        if len(self.windows) >= KEYS_MAX:
            self.windows = {}
