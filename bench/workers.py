"""Rounds of a bench run by a given checkout's apeinxfs in a worker process, so that two checkouts alternate
in one run (this one and REF, e.g. `git worktree add /tmp/ref main`).

`Worker(script, root)` starts `script --worker ROOT` with ROOT's apeinxfs first on its path; `round(*words)`
sends one line and returns the numbers the worker prints back. `serve(root, one_round)` is the worker's
loop: each line's words to `one_round`, its numbers back. Benchmarks only: tests do not import it.
"""
import os
import subprocess
import sys

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
