"""Fair and efficient, through `apeinxfs sim`: examples/workloads/weighted-overload.csv.

Four tenants of weights 100:200:300:400 each send 2 requests/s of 256 + 256 tokens for
300 s to one GPU of 64 slots with a 10,000-token KV pool and 42 ms steps: KV, not slots,
bounds the batch, so tasks are preempted for memory and for fairness. `fair` must give
each tenant its weight's share of service without costing completed requests.
"""
import pytest

from test_simulate import WORKLOADS, simulate_report
from apeinxfs.sim.report import shares

WORKLOAD = WORKLOADS / "weighted-overload.csv"
SETUP = ("--gpus", 1, "--slots", 64, "--kv-tokens", 10000, "--step-ms", 42, "--until", 300)
WEIGHTS = {"w1": 0.1, "w2": 0.2, "w3": 0.3, "w4": 0.4}


def run(path, policy: str) -> dict:
    return simulate_report(path, "--policy", policy, *SETUP)


def scaled_down(tmp_path):
    """The same workload with weights 1:2:3:4."""
    path = tmp_path / "weighted-overload-1234.csv"
    lines = WORKLOAD.read_text().splitlines(keepends=True)
    path.write_text("".join(line.replace("00\n", "\n") if line.endswith("00\n") else line for line in lines))
    return path


@pytest.fixture(scope="module")
def fair():
    return run(WORKLOAD, "fair")


@pytest.mark.slow
def test_fair_serves_the_weights_and_every_tenant_completes_its_part(fair):
    """Service shares within 0.02 of the weights; each tenant completes at least half its weight's share of all."""
    got = shares(fair)
    for name, want in WEIGHTS.items():
        assert abs(got[name] - want) <= 0.02, (name, got)
        assert fair["tenants"][name]["completed"] >= want / 2 * fair["completed"], (name, fair["tenants"])


@pytest.mark.slow
def test_fair_completes_at_least_90_percent_of_fcfs(fair):
    """Fairness costs at most a tenth of the requests fcfs completes on the same node."""
    assert fair["completed"] >= 0.9 * run(WORKLOAD, "fcfs")["completed"] > 0


@pytest.mark.slow
def test_weights_1_2_3_4_give_the_shares_and_preemptions_of_100_200_300_400(fair, tmp_path):
    """Weights are ratios: scaled down 100x they give the same shares and preemptions within 20%."""
    small = run(scaled_down(tmp_path), "fair")
    assert [small["tenants"][n]["weight"] for n in WEIGHTS] == [1, 2, 3, 4]
    for name, share in shares(small).items():
        assert abs(share - shares(fair)[name]) <= 0.01
    assert 0.8 * fair["preemptions"] <= small["preemptions"] <= 1.2 * fair["preemptions"]
