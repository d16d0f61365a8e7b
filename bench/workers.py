"""Rounds of a bench run by a given checkout's apeinxfs in a worker process, so that two checkouts alternate
in one run (this one and REF, e.g. `git worktree add /tmp/ref main`).

`Worker(script, root)` starts `script --worker ROOT` with ROOT's apeinxfs first on its path; `round(*words)`
sends one line and returns the numbers the worker prints back. `serve(root, one_round)` is the worker's
loop: each line's words to `one_round`, its numbers back. `started(script)` gives this checkout's worker and,
given REF as the script's first argument, REF's; `alternated` runs a round of each, in turns; `this_over_ref`
sums up rounds of both. Benchmarks only: tests do not import it.
"""
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


class Worker:
    """A worker process running `script` on checkout `root`."""

    def __init__(self, script: str, root: str):
        env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join([root, BENCH_DIR])}
        self.proc = subprocess.Popen([sys.executable, script, "--worker", root], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def round(self, *words) -> list[float]:
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return [float(number) for number in self.proc.stdout.readline().split()]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(root: str, one_round) -> None:
    """Answer rounds with `root`'s apeinxfs: each stdin line's words to `one_round`, its numbers printed back."""
    sys.path.insert(0, root)
    for line in sys.stdin:
        print(*one_round(*line.split()), flush=True)


@contextlib.contextmanager
def started(script: str) -> Iterator[dict[str, Worker]]:
    """{"ref": REF's worker (REF: the script's first argument, if given), "this": this checkout's}, closed after."""
    this = os.path.dirname(BENCH_DIR)
    roots = {"ref": os.path.abspath(sys.argv[1]), "this": this} if len(sys.argv) > 1 else {"this": this}
    workers = {name: Worker(script, root) for name, root in roots.items()}
    try:
        yield workers
    finally:
        for worker in workers.values():
            worker.close()


def alternated(workers: dict[str, Worker], index: int, *words) -> dict[str, float]:
    """One round of each worker, the first one first in even rounds: {name: the first number it printed}."""
    names = list(workers) if index % 2 == 0 else list(workers)[::-1]
    return {name: workers[name].round(*words)[0] for name in names}


def this_over_ref(rounds: list[dict[str, float]]) -> tuple[float, float, float] | None:
    """(median, least, most) of this / ref over `rounds` of both workers; None with this checkout's alone."""
    if not rounds or "ref" not in rounds[0]:
        return None
    ratios = [one["this"] / one["ref"] for one in rounds]
    return statistics.median(ratios), min(ratios), max(ratios)
