"""How often a flowing stream reads its engine's answer: a few tokens per read, not one.

Each read of an engine's stream costs the daemon's one thread the same (a wake-up, the
HTTP framing, then a kernel step, a wake-up of the task's readers and their FUSE reads),
whether it brings one token or twenty. Once a task's first token went out, `Pace` spaces
its reads by the time the engine takes for TOKENS_PER_READ tokens at the rate seen so far,
kept between MIN_S (a fast engine's tokens still come several per read) and MAX_S (a
reader never sees a token more than that late, and a slow engine's tokens still come at
least that often). `Reads` holds a stream to its interval, worked out before each read
(bare.py and spares.py read through one); openai.py paces it (spares.pace). No I/O here.
"""
import typing

import attrs
import trio

MIN_S = 0.005
MAX_S = 0.1
TOKENS_PER_READ = 10


@attrs.define
class Pace:
    """The read interval of one stream, from when its first token went out and its count then."""

    started_s: float
    tokens_then: int

    def interval_s(self, tokens: int, now_s: float) -> float:
        """Seconds between reads now that the stream has produced `tokens` in all."""
        since = tokens - self.tokens_then
        if since <= 0:
            return MIN_S
        return min(MAX_S, max(MIN_S, TOKENS_PER_READ * (now_s - self.started_s) / since))


@attrs.define
class Reads:
    """When a stream may read next: once `pace`d, at most once per interval."""

    interval: typing.Callable[[], float] | None = None
    last_s: float = 0.0

    def pace(self, interval: typing.Callable[[], float]) -> None:
        """From now on, read at most once per `interval()` seconds (asked once a read, not once a token)."""
        self.interval, self.last_s = interval, trio.current_time()

    async def wait(self) -> None:
        """Before a read: once paced, sleep until the interval after the previous one began."""
        if self.interval is not None:
            await trio.sleep_until(self.last_s + self.interval())
            self.last_s = trio.current_time()
