"""Chaos soak: acknowledged writes survive kill -9 at random moments, over many restarts.

    .venv/bin/python bench/chaos.py      # CHAOS_ROUNDS=100 CHAOS_SEED=1 CHAOS_WRITERS=4 CHAOS_VERIFY_EVERY=5

One daemon on the fast sim config with small [retention] and snapshot intervals, CHAOS_WRITERS
writer processes submitting (single and multi-line writes), killing and re-prioritising their
tasks; each round the daemon is ended at a seeded random moment (kill -9, SIGTERM, or kill -9
aimed at a snapshot being written), started again, and every write acknowledged until then is
checked against the trace archive, with /health and the daemon's invariant
checks, and every CHAOS_VERIFY_EVERY rounds and at the end `replay --verify` (tests/chaosrun.py says how). Prints a line per round, then every problem found and
PASS/MISS. A MISS names the seed: `CHAOS_SEED=N` with the same CHAOS_ROUNDS replays the schedule
of ends (the writers' timing differs from run to run). Not in bench/run: a soak, minutes long.
"""
import os
import signal
import sys
import tempfile

import common  # noqa: F401 - puts tests/ on the path
from chaosrun import run

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "100"))
SEED = int(os.environ.get("CHAOS_SEED", "1"))
WRITERS = int(os.environ.get("CHAOS_WRITERS", "4"))
VERIFY_EVERY = int(os.environ.get("CHAOS_VERIFY_EVERY", "5"))


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a kill of the soak stops its writers and daemon too
    print(f"chaos: {ROUNDS} rounds, seed {SEED}, {WRITERS} writers; load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="apeinx-chaos-") as tmp:
        tally = run(tmp, SEED, ROUNDS, WRITERS, VERIFY_EVERY)
    for problem in tally.problems:
        print(problem)
    print(f"{'PASS' if not tally.problems else 'MISS'} chaos seed {SEED}: {tally.line()}")
    return 1 if tally.problems else 0


if __name__ == "__main__":
    sys.exit(main())
