"""Soak: the kernel state machine (tests/kernel_machine.py) for many more examples than the suite.

    .venv/bin/python bench/soak_kernel.py          # SOAK_EXAMPLES=2000 SOAK_STEPS=100 by default

Every example applies a random sequence of every event kind, checks the kernel's invariants
after each, rebuilds the kernel through the journal codec at each restart and at the end,
and requires the same trace. A failure prints hypothesis's shrunk sequence and exits 1.
It prints examples per second, and what the runs covered: events applied by kind (and how
many were refused and applied as `rejected`), and trace lines by type - a kind that never
shows would be one the machine does not reach. Not a benchmark of the kernel's speed.
"""
import collections
import os
import sys
import time

sys.path[:0] = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")]

from hypothesis import HealthCheck, settings  # noqa: E402 - tests/ is put on the path just above
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

from kernel_machine import KernelMachine  # noqa: E402

EXAMPLES = int(os.environ.get("SOAK_EXAMPLES", "2000"))
STEPS = int(os.environ.get("SOAK_STEPS", "100"))
applied, traced = collections.Counter(), collections.Counter()


class CountingMachine(KernelMachine):
    """The machine, tallying what each example applied and traced."""

    def teardown(self):
        super().teardown()
        applied.update(type(event).__name__ for _, event in self.events)
        traced.update(line.split(",")[2] for line in self.kernel.trace.buffer.decode().splitlines()[1:])


def main() -> int:
    start = time.perf_counter()
    run_state_machine_as_test(CountingMachine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
    seconds = time.perf_counter() - start
    print(f"{EXAMPLES} examples of up to {STEPS} steps in {seconds:.1f} s: {EXAMPLES / seconds:.1f} examples/s")
    print("events applied:", ", ".join(f"{kind} {n}" for kind, n in applied.most_common()))
    print("trace lines:", ", ".join(f"{kind} {n}" for kind, n in traced.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
