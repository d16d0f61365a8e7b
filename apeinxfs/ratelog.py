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

KEYS_MAX = 4096  # keys remembered at once (uids): past it, ended windows are forgotten (their counts stay untold)


@attrs.define
class Window:
    """One key's current window: when it began, lines logged in it, lines suppressed."""

    start: float
    logged: int = 0
    suppressed: int = 0


@attrs.define
class Windows:
    """Per key, at most `burst` admitted in each window of `window_s` on the caller's clock, and with `overall`
    at most that many across all keys (one window for all, begun by the first after the last ended); the rest
    counted. `untold` is what was suppressed and not yet told (`told`): a running count, never recomputed
    from the windows, so it keeps what a forgotten window suppressed."""

    burst: int = 10
    window_s: float = 60.0
    overall: int | None = None
    windows: dict = attrs.Factory(dict)
    untold: int = 0
    all_keys: Window = attrs.field(init=False, factory=lambda: Window(float("-inf")))

    def admit(self, key, now: float) -> tuple[bool, Window | None]:
        """Whether `key` may go now; and the key's window that has just ended, if it suppressed any (its
        count is to be told first: it moves to the new window when this one does not go)."""
        window, ended = self._window(key, now)
        if window.logged < self.burst and self._admit_overall(now):
            window.logged += 1
            return True, ended
        window.suppressed += 1 + (ended.suppressed if ended else 0)
        self.untold += 1
        return False, None

    def told(self, count: int) -> None:
        """`count` of the suppressed were told (journaled in a summary)."""
        self.untold -= count

    def retell(self, key, count: int) -> None:
        """`count` suppressed that could not be told (a failed commit) are told when the key's next window opens."""
        if key in self.windows:
            self.windows[key].suppressed += count

    def _admit_overall(self, now: float) -> bool:
        if self.overall is None:
            return True
        if not 0 <= now - self.all_keys.start < self.window_s:
            self.all_keys = Window(now)
        self.all_keys.logged += 1
        return self.all_keys.logged <= self.overall

    def _window(self, key, now: float) -> tuple[Window, Window | None]:
        """The key's window, a new one once it ended (or the clock went back before it began: the daemon's
        follows the host's); and the ended one if it suppressed any. Past KEYS_MAX keys, each still in its
        window, a new key gets a window that is not kept: its lines count only against `overall`."""
        window = self.windows.get(key)
        if window is not None and 0 <= now - window.start < self.window_s:
            return window, None
        if window is None and len(self.windows) >= KEYS_MAX:
            self.windows = {k: w for k, w in self.windows.items() if 0 <= now - w.start < self.window_s}
            if len(self.windows) >= KEYS_MAX:
                return Window(now), None
        self.windows[key] = Window(now)
        return self.windows[key], window if window is not None and window.suppressed else None


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
