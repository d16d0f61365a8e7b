"""Paired A/B of two checkouts' daemons: refused writes per second from one uid, and the trace each leaves.

    git archive COMMIT | tar -x -C /tmp/ref && .venv/bin/python bench/bench_rejects.py /tmp/ref [THIS]

Both daemons (REF's apeinxfs package and THIS one's, default this checkout) are mounted at once with
the default config, and one process refuses writes on each in turn (os.open, os.write of `99` to
ctl/kill, which has no task 99: ENOENT, os.close), in slices of BENCH_SECONDS / 4 alternating, so load
on a shared machine falls on both alike. A round prints each daemon's refused writes per second, the
ratio THIS / REF, and the trace bytes each refused write left (`trace/events`' size counts every line
ever written): with the per-uid limit of `[limits] reject_lines` (redteam4: 2,270 refused writes/s of
one user grew the trace by about 139 B each, for ever) THIS's falls toward nothing as the writes go on.
Env: BENCH_SECONDS (2, each daemon's time a round), BENCH_ROUNDS (3). Not part of bench/run: it needs a
second checkout.
"""
import contextlib
import errno
import os
import statistics
import sys
import time

from common import ROUNDS, SECONDS, checkouts_argued, checkouts_mounted, sim_config

SLICES = 4


def refuse_for(kill: str, seconds: float) -> int:
    """Refused writes to `kill` made in `seconds`."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        fd = os.open(kill, os.O_WRONLY)
        try:
            os.write(fd, b"99\n")
        except OSError as error:
            assert error.errno == errno.ENOENT, error
            count += 1
        finally:
            os.close(fd)
    return count


def round_of(daemons: dict) -> dict:
    """{name: (refused writes a second, trace bytes a refused write)} over SLICES alternating slices each."""
    sizes = {name: os.stat(d.path("trace", "events")).st_size for name, d in daemons.items()}
    counts = dict.fromkeys(daemons, 0)
    for index in range(SLICES):
        for name in sorted(daemons, reverse=bool(index % 2)):
            counts[name] += refuse_for(daemons[name].path("ctl", "kill"), SECONDS / SLICES)
    grown = {name: os.stat(d.path("trace", "events")).st_size - sizes[name] for name, d in daemons.items()}
    return {name: (counts[name] / SECONDS, grown[name] / counts[name]) for name in daemons}


def main() -> int:
    if (checkouts := checkouts_argued(__doc__)) is None:
        return 1
    ratios = []
    for round_ in range(ROUNDS):
        with contextlib.ExitStack() as stack:
            daemons = checkouts_mounted(stack, sim_config(2), checkouts, ("ref", "this")[::1 if round_ % 2 else -1])
            figures = round_of(daemons)
        ratios.append(figures["this"][0] / figures["ref"][0])
        print(f"round {round_}: " + ", ".join(f"{name} {rate:,.0f} refused writes/s, {trace:.1f} trace B each"
                                             for name, (rate, trace) in sorted(figures.items()))
              + f": {ratios[-1]:.3f}", flush=True)
    print(f"this / ref, refused writes per second: median {statistics.median(ratios):.3f} "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
