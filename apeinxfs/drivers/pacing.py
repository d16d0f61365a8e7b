"""How often a flowing stream reads its engine's answer: a few tokens per read, not one.

Each read of an engine's stream costs the daemon's one thread the same (a wake-up, the
HTTP framing, then a kernel step, a wake-up of the task's readers and their FUSE reads),
whether it brings one token or twenty. Once a task's first token went out, `Pace` spaces
its reads by the time the engine takes for TOKENS_PER_READ tokens at the rate seen so far,
kept between MIN_S (a fast engine's tokens still come several per read) and MAX_S (a
reader never sees a token more than that late, and a slow engine's tokens still come at
least that often). `Reads` holds a stream to its interval (bare.py and spares.py read through
one); openai.py sets it (spares.pace). No I/O here.
"""
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
    """When a stream may read next: once `pace`d, at most once per `interval_s`."""

    interval_s: float = 0.0
    last_s: float = 0.0

    def pace(self, interval_s: float) -> None:
        """Read at most once per `interval_s` from now on; the first call starts the clock."""
        self.last_s = self.last_s if self.interval_s else trio.current_time()
        self.interval_s = interval_s

    async def wait(self) -> None:
        """Before a read: once paced, sleep until `interval_s` after the previous one began."""
        if self.interval_s:
            await trio.sleep_until(self.last_s + self.interval_s)
            self.last_s = trio.current_time()
