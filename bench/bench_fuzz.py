"""Fuzz inputs tried per second (tests/test_fuzz.py's), through a mount and at the nodes tier.

Each tier runs the suite's fuzz examples (hypothesis, generate phase only, no database)
for BENCH_FUZZ_INPUTS inputs, each checked as the tests check it (errno from the table,
a reason, a good line on the same descriptor, the daemon up, no acknowledged pid lost);
as a baseline it runs the same harness (and hypothesis) with one plain good submit as
the input, in the same run. It prints inputs per second, the ratio to the baseline, and the table of what
the inputs got (target file x errno) that docs/security.md quotes. No target: a
slower fuzz is a figure to look at, not a failure.
"""
import errno
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import apeinxfs_mount  # first: it puts tests/ on the path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import test_fuzz
from apeinxfs.fs import Operations
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime

INPUTS = int(os.environ.get("BENCH_FUZZ_INPUTS", "1000"))
BASELINE = st.integers(0, 10**9).map(lambda n: ("/ctl/submit", [b"plain%d 1 5\n" % n]))  # through hypothesis too


def per_second(world, cases, count: int) -> float:
    """Inputs from `cases` per second, generation and checks included."""
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case):
        test_fuzz.fuzz_one(world, *case)
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def measure(name: str, world, table: Counter) -> None:
    base = per_second(world, BASELINE, INPUTS // 2)
    before = Counter(world.table)
    fuzz = per_second(world, test_fuzz.CASES, INPUTS)
    table.update(world.table - before)
    print(f"{name}: {fuzz:,.0f} fuzz inputs/s, {base:,.0f} plain submits/s through the same checks: "
          f"ratio {fuzz / base:.2f}")


def print_table(table: Counter) -> None:
    """Writes by target file and what they got (`ok` or the errno)."""
    codes = sorted({code for _, code in table}, key=lambda code: (code is not None, code or 0))
    totals = Counter()
    for (_, code), count in table.items():
        totals[code] += count
    print(f"{'file':<24}" + "".join(f"{'ok' if code is None else errno.errorcode[code]:>8}" for code in codes))
    for target in sorted({target for target, _ in table}):
        print(f"{target:<24}" + "".join(f"{table[target, code]:>8}" for code in codes))
    print(f"{'total':<24}" + "".join(f"{totals[code]:>8}" for code in codes))


def main() -> None:
    table = Counter()
    with tempfile.TemporaryDirectory(prefix="apeinx-fuzz-") as tmp:
        with open_runtime(Path(tmp), test_fuzz.CONFIG) as runtime:
            measure("nodes tier", test_fuzz.NodesWorld(Operations(Tree(runtime))), table)
    with apeinxfs_mount(test_fuzz.CONFIG, name="fuzz") as daemon:
        world = test_fuzz.MountWorld(daemon)
        try:
            measure("mount", world, table)
        finally:
            os.close(world.trace)
    print(f"{2 * INPUTS} fuzz inputs ({sum(table.values())} writes), by file and errno:")
    print_table(table)


if __name__ == "__main__":
    main()
