"""`apeinxfs sim`: run a workload CSV through the real kernel on a virtual clock.

    apeinxfs sim WORKLOAD.csv [--policy P] [--gpus N] [--slots N] [--kv-tokens N]
                 [--page-tokens N] [--step-ms MS] [--until S] [--window S]
                 [--report table|json] [--trace FILE] [--state-dir DIR] [--plot FILE.svg]

This module is the command line only: the workload format is sim/workload.py, the run
sim/engine.py, the numbers sim/report.py and sim/fairness.py, the picture sim/plot.py;
docs/simulator.md says what each option and each number means.
"""
import argparse
import json
import os
import sys

from .kernel.errors import ApeinxError
from .kernel.sched import POLICIES
from .sim import engine, plot, report, workload
from .sim.config import Options


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="apeinxfs sim", description="Simulate a workload on the apeinxfs kernel.")
    parser.add_argument("workload", help="CSV: arrival_s,tenant,name,prompt_tokens,output_tokens,prio,"
                                         "deadline_s,parent,weight[,prefix_group,prefix_tokens]")
    parser.add_argument("--policy", metavar="P",
                        help=f"scheduler policy: {'|'.join(sorted(POLICIES))} (default: defaults.toml)")
    parser.add_argument("--gpus", metavar="N", type=int, help="simulated GPUs (default: defaults.toml)")
    parser.add_argument("--slots", metavar="N", type=int, help="batch slots per GPU (default: defaults.toml)")
    parser.add_argument("--kv-tokens", metavar="N", type=int,
                        help="KV pool per GPU, in tokens (default: defaults.toml's kv_mib)")
    parser.add_argument("--page-tokens", metavar="N", type=int, default=16, help="tokens per KV page (default 16)")
    parser.add_argument("--step-ms", metavar="MS", type=float, help="decode step time in ms (default: defaults.toml)")
    parser.add_argument("--until", metavar="S", type=float, help="stop at this many seconds of virtual time")
    parser.add_argument("--window", metavar="S", type=float, default=60.0,
                        help="fairness window in seconds (default 60)")
    parser.add_argument("--report", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--trace", metavar="FILE", help="write the trace CSV (as /ai/trace/events) to this file")
    parser.add_argument("--state-dir", metavar="DIR", help="keep the journal here (for apeinxfs replay --verify)")
    parser.add_argument("--plot", metavar="FILE", help="draw each tenant's service share and TTFT over time (SVG)")
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    return Options(policy=args.policy, gpus=args.gpus, slots=args.slots, kv_tokens=args.kv_tokens,
                   page_tokens=args.page_tokens, step_ms=args.step_ms, until=args.until,
                   window=args.window, state_dir=args.state_dir, trace=args.trace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        chosen = options(args)
        outcome = engine.simulate(workload.load(args.workload), chosen)
        result = report.build(outcome)
        if args.plot:
            _draw(args.plot, outcome, os.path.basename(args.workload), report.setup_line(result))
    except (ApeinxError, OSError, engine.Stalled) as exc:
        print(f"apeinxfs sim: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.report == "json" else report.table(result).rstrip("\n"))
    return 0


def _draw(path: str, outcome, title: str, subtitle: str) -> None:
    with open(path, "w") as file:
        file.write(plot.render(outcome, title, subtitle))


if __name__ == "__main__":
    sys.exit(main())
