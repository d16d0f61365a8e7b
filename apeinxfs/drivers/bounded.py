"""A body read up to a limit: the one loop the drivers read a bounded answer with (sse.whole, an answer
that is one event; scrape.body_of, a /metrics or /slots body; openai's error bodies, their start).

Not a decoder: the bytes come back as they came, and each caller says in its own words what a body over
its limit is.
"""
import contextlib


async def up_to(pieces, limit: int, over: Exception | None = None) -> bytes:
    """The bytes of a body's `pieces` (an async generator, closed here), `limit` at most: a body longer is
    `over` raised, not read on; without `over`, it is cut at `limit`."""
    body = bytearray()
    enough = limit if over is None else limit + 1  # a cut body is whole at `limit`; a refusal needs one byte past it
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            body += piece
            if len(body) >= enough:
                if over is not None:
                    raise over
                return bytes(body[:limit])
    return bytes(body)
