"""The simulator's report: per-tenant numbers from the kernel's final state, as JSON or a table.

`build(outcome)` reads the tasks the kernel holds at the end of a run (tokens served by
then, in-flight tasks included) and the meter's fairness numbers; `table(report)` prints
it for people; `shares(report)` gives each tenant's part of all service, the number the
fairness tests compare. Definitions: docs/simulator.md.
"""
import math

from ..kernel.config import MIB
from .fairness import fairness


def build(outcome) -> dict:
    """The report of a finished run, as plain JSON-able data."""
    kernel, end_s = outcome.runtime.kernel, outcome.end_us / 1e6
    tasks = _by_tenant(kernel.tasks.values(), lambda task: task.tenant)
    refused = _by_tenant(outcome.rejected, lambda rejected: rejected[0].spec.tenant)
    tenants = {name: _tenant(outcome, name, tasks.get(name, []), len(refused.get(name, [])))
               for name in outcome.workload.tenants}
    tokens = sum(t["tokens_in"] + t["tokens_out"] for t in tenants.values())
    counters = kernel.counters
    return {**_setup(outcome), "sim_seconds": end_s, "wall_seconds": outcome.wall_s,
            "speed": end_s / outcome.wall_s if outcome.wall_s else None,
            **{key: sum(t[key] for t in tenants.values()) for key in _TOTALS},
            "throughput_tokens_s": tokens / end_s if end_s else 0.0, "steps": counters.steps,
            "preemptions": counters.preempted, "evictions": counters.evictions, "oom_kills": counters.oom_kills,
            **_prefix_cache(kernel),
            **fairness(outcome.meter, outcome.workload.weights),
            "tenants": tenants}


_TOTALS = ("requests", "completed", "rejected", "tokens_in", "tokens_out", "service")


def _setup(outcome) -> dict:
    """How the simulated node was configured."""
    config = outcome.runtime.kernel.config
    pages = config.gpus[0].kv_mib * MIB // config.page_bytes
    return {"policy": config.policy, "gpus": len(config.gpus), "slots": config.gpus[0].slots,
            "kv_tokens": pages * outcome.options.page_tokens, "page_tokens": outcome.options.page_tokens,
            "step_ms": config.models[0].options.get("decode_step_ms"), "window_s": outcome.options.window}


def _prefix_cache(kernel) -> dict:
    """Prefix cache blocks found (hits) and not (misses) at placement, over all GPUs."""
    hits, misses = sum(c.hits for c in kernel.kv.caches), sum(c.misses for c in kernel.kv.caches)
    return {"prefix_hits": hits, "prefix_misses": misses,
            "prefix_hit_rate": hits / (hits + misses) if hits + misses else 0.0}


def _by_tenant(items, tenant_of) -> dict:
    """{tenant: [items]}."""
    groups: dict = {}
    for item in items:
        groups.setdefault(tenant_of(item), []).append(item)
    return groups


def _tenant(outcome, name: str, tasks: list, refused: int) -> dict:
    """One tenant's requests, tokens served, service and latencies."""
    started = [t for t in tasks if t.first_token_us is not None]
    done = [t for t in tasks if t.exit == "done"]
    ttfts = sorted((t.first_token_us - t.submitted_us) / 1e6 for t in started)
    tokens_in, tokens_out = sum(t.tokens_in for t in started), sum(t.tokens_out for t in tasks)
    sched = outcome.runtime.kernel.config.sched
    return {"weight": outcome.workload.weights[name], "requests": len(tasks) + refused, "completed": len(done),
            "rejected": refused, "exits": _exits(tasks), "tokens_in": tokens_in, "tokens_out": tokens_out,
            "service": sched.input_cost * tokens_in + sched.output_cost * tokens_out,
            "ttft_mean_s": _mean(ttfts), "ttft_p99_s": percentile(ttfts, 99),
            "latency_mean_s": _mean([(t.exited_us - t.submitted_us) / 1e6 for t in done])}


def _exits(tasks) -> dict:
    counts: dict = {}
    for task in tasks:
        if task.exit is not None:
            kind = task.exit.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def percentile(ordered: list, p: float) -> float | None:
    """Nearest-rank percentile of sorted values: the smallest value with p% of them at or below it."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def shares(report: dict) -> dict:
    """Each tenant's part of all service served (0..1); all zero when nothing was served."""
    total = sum(t["service"] for t in report["tenants"].values())
    return {name: (t["service"] / total if total else 0.0) for name, t in report["tenants"].items()}


COLUMNS = ("tenant", "weight", "requests", "done", "refused", "tokens_in", "tokens_out", "service", "share",
           "ttft_mean", "ttft_p99", "latency")


def table(report: dict) -> str:
    """The report for people: setup, speed, one row per tenant, totals, fairness."""
    share = shares(report)
    rows = [COLUMNS] + [_row(name, t, share[name]) for name, t in report["tenants"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(_header(report) + lines + _footer(report)) + "\n"


def _row(name: str, t: dict, share: float) -> tuple:
    return (name, str(t["weight"]), str(t["requests"]), str(t["completed"]), str(t["rejected"]),
            str(t["tokens_in"]), str(t["tokens_out"]), f"{t['service']:.0f}", f"{share:.3f}",
            _seconds(t["ttft_mean_s"]), _seconds(t["ttft_p99_s"]), _seconds(t["latency_mean_s"]))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def setup_line(r: dict) -> str:
    """The simulated node in one line: policy, GPUs, slots, KV pool and step."""
    return (f"policy {r['policy']}: {r['gpus']} GPU(s) x {r['slots']} slots, KV {r['kv_tokens']} tokens per GPU "
            f"in pages of {r['page_tokens']}, decode step {r['step_ms']} ms")


def _header(r: dict) -> list[str]:
    speed = "-" if r["speed"] is None else f"{r['speed']:.0f}x"
    return [setup_line(r),
            f"simulated {r['sim_seconds']:.1f} s in {r['wall_seconds']:.2f} s of wall time: {speed} "
            f"(simulated seconds per wall second), {r['steps']} engine steps", ""]


def _footer(r: dict) -> list[str]:
    return ["", f"requests {r['requests']}, completed {r['completed']}, refused {r['rejected']}; "
                f"throughput {r['throughput_tokens_s']:.1f} tokens/s",
            f"preemptions {r['preemptions']}, evictions {r['evictions']}, oom_kills {r['oom_kills']}; "
            f"prefix cache hits {r['prefix_hits']}, misses {r['prefix_misses']} (hit rate {r['prefix_hit_rate']:.3f})",
            f"service_gap {r['service_gap']:.0f}; windowed_unfairness {r['windowed_unfairness']:.1f}/s "
            f"(mean {r['windowed_unfairness_mean']:.1f}/s over {r['window_s']:g} s windows)"]
