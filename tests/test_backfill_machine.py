"""Tier 1: the kernel state machine (tests/kernel_machine.py) on two models bound to disjoint GPUs, so that
backfill (kernel/moves.py) is fuzzed with every event kind, the invariants checked after each rule, and
the queue's order checked to survive the heads looked past being set aside and pushed back, and each dispatch
line's count of backlogged tenants checked against the tenants of the tasks waiting then."""
import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from apeinxfs.kernel.config import GpuConfig, KernelConfig, MemoryRetention, ModelConfig, SchedConfig
from apeinxfs.kernel.moves import Moves
from apeinxfs.kernel.tenant_config import TenantConfig
from kernel_machine import KernelMachine
from test_backfill import drain_order

pytestmark = pytest.mark.invariants_every(0)  # the machine checks the invariants after each rule itself


def two_model_config(retention: MemoryRetention = MemoryRetention()) -> KernelConfig:
    """kernel_machine's two GPUs (GPU 0 of one slot, so that it is often full), with `sim` bound to GPU 0 and `extra`
    to GPU 1 (an endpoint each)."""
    models = [ModelConfig(name="sim", context=4096, endpoints=[{"url": "http://127.0.0.1:1", "gpus": [0]}]),
              ModelConfig(name="extra", context=2048, endpoints=[{"url": "http://127.0.0.1:2", "gpus": [1]}])]
    return KernelConfig(models=models, page_mib=1, retention=retention,
                        sched=SchedConfig(policy="fair", min_run_tokens=2, deadline_boost_s=0.05),
                        gpus=[GpuConfig(index=0, kv_mib=12, slots=1),
                              GpuConfig(index=1, kv_mib=9, slots=3, simulated=False)],
                        tenants=[TenantConfig("default"), TenantConfig("a", weight=300)], billing_period_s=1)


class TwoModelMachine(KernelMachine):
    """The kernel machine on two models that share no GPU."""

    config = staticmethod(two_model_config)

    @invariant()
    def heads_set_aside_keep_their_places(self):
        """Taking the queue's first heads out and pushing them back leaves the queue's order as it was."""
        assert drain_order(self.kernel, 4) == drain_order(self.kernel)


@pytest.fixture
def backlog_checked(monkeypatch) -> list[int]:
    """Every dispatch line's `of N backlogged` checked against the tenants of the tasks waiting in the run queue
    as it was dispatched, counted from the queue's tasks and the heads a backfill set aside; the counts checked."""
    dispatch, checked = Moves._dispatch, []

    def counted(moves, task, gpu, passed, past):
        waiting = {t.tenant for t in [*moves.runq.tasks(), *passed]}
        dispatch(moves, task, gpu, passed, past)
        said = re.search(r"of (\d+) backlogged", moves.trace.lines_after(moves.trace.seq - 1).decode())
        if said:
            assert int(said[1]) == len(waiting), f"{said[0]}, but tenants {sorted(waiting)} have tasks waiting"
            checked.append(len(waiting))

    monkeypatch.setattr(Moves, "_dispatch", counted)
    return checked


def test_random_event_sequences_on_two_models_keep_the_books_and_the_order(backlog_checked):
    """100 sequences of 50 rules on two models: invariants hold after each, set-aside heads keep their places,
    dispatch lines count the backlogged tenants right, replay gives the same trace."""
    run_state_machine_as_test(TwoModelMachine, settings=settings(
        max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
    assert backlog_checked


def test_the_machine_backfills(backlog_checked):
    """The machine's rules reach a backfill: sim's GPU full, a task of extra runs past sim's queued head, whose
    tenant (a, with no other task waiting) is counted backlogged."""
    machine = TwoModelMachine()
    machine.submit([(None, None, 40, 5, "hello", None, "sim"), ("a", None, 40, 5, "hello", None, "sim"),
                    (None, None, 40, 5, "hello", None, "extra")])
    sim_head, extra_task = (machine.kernel.tasks[pid] for pid in (2, 3))
    assert sim_head.gpu is None and extra_task.gpu == 1
    assert "backfill past pid 2 (its GPUs are full), then least counter: tenant default of 2 backlogged" in \
        machine.kernel.trace.buffer.decode().splitlines()[-1]
    assert backlog_checked[-1] == 2
    machine.teardown()
