"""A model's engine as its driver last found it: ready, starting, unreachable or failed.

Drivers report what each check found (`host.report_state(model, state, error)`): a
scrape of the engine's metrics, a request's answer, the loading of a model. `advance`
keeps the state, the last error and since when the state holds (a check that finds the
same state keeps its `since`). Observed, like engine metrics: never journaled; but when the `outage`
it means begins or ends, the daemon journals an `EngineHealth` event, and the kernel dispatches
nothing to a model whose engine is down (kernel/engines.py). A model with several endpoints has a
state per endpoint, and the best of them as its own (`best`). Not here: which answer means which
state (each driver's own).

- ready: the engine answered the last check (a sim model: from its start).
- starting: no check has answered yet, or the engine says it is loading (HTTP 503).
- unreachable: the last check could not reach the engine (no connection, a timeout).
- failed: the engine cannot serve the model (its load failed; HTTP 404 for the model).
"""
import time

import attrs

STATES = ("ready", "starting", "unreachable", "failed")


@attrs.frozen
class EngineState:
    """One model's engine state, since when it holds (µs), and the last error while not ready."""

    state: str = attrs.field(validator=attrs.validators.in_(STATES))
    since_us: int
    error: str | None = None


def advance(previous: EngineState | None, state: str, error: str | None, now_us: int) -> EngineState:
    """The state after a check found `state` (with `error`, if it failed) at `now_us`."""
    if previous is not None and previous.state == state:
        return attrs.evolve(previous, error=error)
    return EngineState(state, now_us, error)


def outage(engine: EngineState | None) -> str | None:
    """Why nothing should be dispatched to the engine now, or None: it is unreachable, or it said it
    is loading (HTTP 503). `failed` is not an outage: its tasks fail at once with the engine's reason."""
    if engine is not None and (engine.state == "unreachable" or engine.state == "starting" and engine.error):
        return f"{engine.state}: {engine.error}"
    return None


def best(endpoints: list[EngineState]) -> EngineState | None:
    """A model's state from its endpoints' (kernel/endpoints.py): the best of them, in the order of
    STATES (ready if any is), the longest held on a tie; None if none reported."""
    return min(endpoints, key=lambda seen: (STATES.index(seen.state), seen.since_us), default=None)


def rows(engine: EngineState | None) -> list[tuple[str, str]]:
    """State, Since (UTC) and LastError rows of /models/NAME/status; `starting` before any report."""
    if engine is None:
        return [("State", "starting"), ("Since", "-"), ("LastError", "-")]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(engine.since_us / 1e6))
    return [("State", engine.state), ("Since", since), ("LastError", engine.error or "-")]
