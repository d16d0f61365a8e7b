"""Fairness acceptance through `apeinxfs sim`: shares, weights, TTFT under a flood, lift, throughput.

Each test runs an example workload (examples/workloads/) on one simulated GPU with the
real kernel on a virtual clock and asserts on the numbers the report (or trace) gives.
The prefix-cache hit rate is checked in test_simulate.py (504 hits of 900 blocks).
"""
import csv
from pathlib import Path

import pytest

from test_simulate import simulate_report

WORKLOADS = Path(__file__).resolve().parent.parent / "examples" / "workloads"


def shares(report: dict) -> dict[str, float]:
    total = sum(t["service"] for t in report["tenants"].values())
    return {name: t["service"] / total for name, t in report["tenants"].items()}


def run(workload: str, policy: str, *flags) -> dict:
    return simulate_report(WORKLOADS / workload, "--policy", policy, "--gpus", 1, *flags)


@pytest.mark.parametrize("policy", ["fair", "vtc"])
def test_equal_tenants_share_equally_although_one_sends_twice_as_much(policy):
    """overload: a sends 2x b's requests; fair and vtc serve each 0.47..0.53 (fcfs gives about 0.67/0.33)."""
    got = shares(run("overload.csv", policy, "--until", 60))
    assert 0.47 <= got["a"] <= 0.53 and 0.47 <= got["b"] <= 0.53
    fcfs = shares(run("overload.csv", "fcfs", "--until", 60))
    assert fcfs["a"] > 0.6


def test_weights_1_2_3_4_give_shares_within_002():
    """weighted: four backlogged tenants of weights 100..400 get 0.1/0.2/0.3/0.4 of service within 0.02."""
    got = shares(run("weighted.csv", "fair", "--until", 60))
    for name, want in (("w1", 0.1), ("w2", 0.2), ("w3", 0.3), ("w4", 0.4)):
        assert abs(got[name] - want) <= 0.02, (name, got)


def test_light_tenant_ttft_stays_within_2x_of_alone_while_heavy_floods():
    """light-heavy vs light-alone: fair keeps the light tenant's mean TTFT under twice what it gets alone."""
    alone = run("light-alone.csv", "fair")["tenants"]["light"]["ttft_mean_s"]
    flooded = run("light-heavy.csv", "fair")["tenants"]["light"]["ttft_mean_s"]
    fcfs = run("light-heavy.csv", "fcfs")["tenants"]["light"]["ttft_mean_s"]
    assert flooded <= 2 * alone < fcfs


@pytest.mark.parametrize("workload", ["overload.csv", "light-heavy.csv"])
def test_fair_throughput_within_5_percent_of_fcfs(workload):
    """Fairness costs at most 5% of the tokens per second that fcfs serves on the same workload."""
    fair = run(workload, "fair")["throughput_tokens_s"]
    fcfs = run(workload, "fcfs")["throughput_tokens_s"]
    assert fair >= 0.95 * fcfs


def dispatches(trace_path: Path) -> list[tuple[float, str]]:
    with open(trace_path) as file:
        return [(int(r["time_us"]), r["tenant"]) for r in csv.DictReader(file) if r["type"] == "dispatch"]


def test_returning_tenant_gets_no_more_than_one_lift_worth(tmp_path):
    """on-off: back from 15 s idle, onoff is lifted and does not monopolise: steady is dispatched within a batch."""
    trace = tmp_path / "trace.csv"
    run("on-off.csv", "fair", "--trace", trace)
    order = dispatches(trace)
    start = order[0][0]
    back = next(i for i, (t, tenant) in enumerate(order) if tenant == "onoff" and t - start > 30e6)
    run_of_onoff = next(i for i, (_, tenant) in enumerate(order[back:]) if tenant == "steady")
    assert run_of_onoff <= 8, f"onoff took {run_of_onoff} dispatches in a row after returning"
    with open(trace) as file:
        assert any(r["type"] == "lift" and r["tenant"] == "onoff" for r in csv.DictReader(file))

