"""The bug boundary of the daemon's background loops: `Supervisor.supervised(name, loop)`.

fs.py's `guarded` keeps a bug in a request handler from taking the mount down; this does the same
for the loops `Runtime.run` and `Cluster.run` start. `supervised` runs a loop; an Exception it
lets out (an ExceptionGroup of Exceptions too) is a bug: logged with its traceback the first time
it comes from a place (loop, type, file and line), then in one line per failure, rate-limited per
loop like fs.py's bug log; kept as the loop's `Bug` (/ai/health shows one row a loop: `show`);
and the loop is started again after a backoff of RESTART_MIN_S, doubled at each failure up to
RESTART_MAX_S, and back to RESTART_MIN_S once a run lasted STEADY_S. A loop that returns is
done and not started again. A BaseException that is not an Exception (trio.Cancelled,
KeyboardInterrupt, a group holding one) passes through untouched.

`note` alone serves a boundary that does not restart: a driver's job (drivers/flow.py) whose bug
fails its task, and the cluster's etcd watch check (cluster/etcd_watch.py) whose bug leaves its
stream, each kept here as a Bug with that outcome.

Not here: whether a loop is safe to start again (its caller decides, and supervises only those
that are: runtime.py, cluster/daemon.py), the errors a loop expects and handles itself (etcd's
refusals, a full disk), and bugs of requests (fs.py).
"""
import logging
import os
import traceback
from collections.abc import Awaitable, Callable

import attrs
import trio

from .ratelog import RateLog

log = logging.getLogger(__name__)
RESTART_MIN_S = 1.0  # the first pause before a failed loop runs again
RESTART_MAX_S = 30.0  # the longest pause: the backoff doubles up to it
STEADY_S = 60.0  # a run that lasted this long before failing starts the backoff over


@attrs.define
class Bug:
    """A loop's failures: how many, and the last one's type, place (file:line), wall time (µs) and
    what was done about it (`restarted`; `its task failed` for a driver's job, drivers/flow.py)."""

    error: str
    where: str
    times: int
    last_us: int
    outcome: str = "restarted"

    def row(self, name: str) -> str:
        """Its /ai/health value: `NAME: TYPE at FILE:LINE (N times, last at US; OUTCOME)`."""
        times = "once" if self.times == 1 else f"{self.times} times"
        return f"{name}: {self.error} at {self.where} ({times}, last at {self.last_us}; {self.outcome})"


class Supervisor:
    """The loops' bugs by loop name, and the runner that contains them."""

    def __init__(self, now_us: Callable[[], int]):
        self.now_us = now_us  # wall time in µs, the trace's (clock.WallClock)
        self.bugs: dict[str, Bug] = {}
        self.places: set[tuple[str, str, str]] = set()  # (loop, type, file:line) logged with a traceback
        self.repeats = RateLog(log)

    async def supervised(self, name: str, loop: Callable[..., Awaitable[None]], *args) -> None:
        """Run `loop(*args)` until it returns or is cancelled, starting it again after each bug."""
        pause = RESTART_MIN_S
        while True:
            began = trio.current_time()
            try:
                await loop(*args)
                return
            except Exception as exc:  # a bug: BaseExceptions (Cancelled) are not caught
                self.note(name, exc)
            if trio.current_time() - began >= STEADY_S:
                pause = RESTART_MIN_S
            await trio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)

    def note(self, name: str, exc: Exception, outcome: str = "restarted") -> None:
        """Keep `exc` as loop `name`'s last bug, with what was done about it, and log it (its traceback
        once a place)."""
        error, where = place_of(exc)
        bug = self.bugs.get(name)
        self.bugs[name] = Bug(error, where, (bug.times if bug else 0) + 1, self.now_us(), outcome)
        if (name, error, where) not in self.places:
            self.places.add((name, error, where))
            log.error("bug in %s: %s at %s; %s", name, error, where, outcome, exc_info=exc)
            return
        self.repeats.log(name, logging.ERROR, "bug in %s again: %s: %r at %s (%d times); %s", name, error,
                         str(exc)[:200], where, self.bugs[name].times, outcome)

    def show(self) -> str:
        """/ai/health's `Bug:` rows, one a loop that failed, by name."""
        return "".join(f"Bug:\t{bug.row(name)}\n" for name, bug in sorted(self.bugs.items()))


def place_of(exc: BaseException) -> tuple[str, str]:
    """(type name, FILE:LINE where it was raised) of `exc`, or of a group's first exception, deepest first."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
    return type(exc).__name__, where
