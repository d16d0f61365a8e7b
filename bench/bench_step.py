"""What an engine step costs the daemon, in process (no FUSE, no driver): `Runtime.deliver(Step)`.

    .venv/bin/python bench/bench_step.py [REF]

A Runtime with its own journal (one simulated GPU of 8 slots, model sim) runs 8 tasks of 30,000
tokens; a round delivers STEPS steps of one chunk each for the 8, as the Outbox does (drivers/flow.py),
journaled as the daemon journals them (a steps row when the progress timer would write one: here
every 10 steps), and says the CPU µs a step, least of 3 tries, each round on a Runtime of its own.
With REF (another checkout, e.g. `git worktree add --detach /tmp/ab-ref main`) each round runs REF's
and this checkout's apeinxfs in two worker processes (bench/workers.py), alternating, and prints each
side's median over the rounds and the median of the rounds' this / REF (with their range). Figures
only: nothing is judged.
"""
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

from workers import alternated, serve, started, this_over_ref

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
STEPS = 3_000  # a try; a round's 3 tries: 9,000 tokens a task, under its 30,000
HERE = os.path.abspath(__file__)
CONFIG = '[gpus]\nsimulated = 1\nslots = 8\n[[models]]\nname = "sim"\n[models.options]\ndecode_step_ms = 1000\n'


def runtime():
    """A Runtime on a fresh journal in a temporary directory, 8 tasks of 30,000 tokens running."""
    from apeinxfs import config as config_mod
    from apeinxfs.journal import Journal
    from apeinxfs.kernel.events import Submit
    from apeinxfs.kernel.spec import TaskSpec
    from apeinxfs.runtime import Runtime
    directory = tempfile.mkdtemp(prefix="bench-step-")
    atexit.register(shutil.rmtree, directory)  # the worker's rounds' directories, when it ends
    with open(os.path.join(directory, "config.toml"), "w") as file:
        file.write(CONFIG)
    config = config_mod.load(os.path.join(directory, "config.toml"), directory, use_nvml=False)
    rt = Runtime(config, Journal(os.path.join(directory, "journal.db")))
    rt.commit([Submit(spec=TaskSpec(name=f"t{index}", max_tokens=30_000), uid=1000) for index in range(8)])
    return rt


def one_round() -> tuple[float]:
    """CPU µs a step: least of 3 tries of STEPS steps, on a Runtime of its own."""
    from apeinxfs.kernel.events import Chunk, Step
    rt = runtime()
    pids = [task.pid for task in rt.kernel.batch(0)]
    tries = []
    for _ in range(3):
        began = time.process_time()
        for index in range(STEPS):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, " word", 1) for pid in pids]))
            if index % 10 == 9:
                rt.journal.flush()
        tries.append((time.process_time() - began) / STEPS * 1e6)
    return (min(tries),)


def main() -> None:
    with started(HERE) as workers:
        rounds = [alternated(workers, index) for index in range(ROUNDS)]
    cells = " ".join(f"{name} {statistics.median(r[name] for r in rounds):.1f}" for name in workers)
    ratio = this_over_ref(rounds)
    tail = f"  this/ref {ratio[0]:.3f} (rounds {ratio[1]:.3f}-{ratio[2]:.3f})" if ratio else ""
    print(f"CPU µs a step: {cells}{tail}", flush=True)

if __name__ == "__main__":
    serve(sys.argv[2], lambda *_: one_round()) if sys.argv[1:2] == ["--worker"] else main()
