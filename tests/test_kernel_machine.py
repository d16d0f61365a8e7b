"""Tier 1: random sequences of every kernel event kind keep the books and replay to the same trace.

The machine (tests/kernel_machine.py) admits and applies submits with and without parents,
kills, stop/cont/prio, tenant add/set/remove with weights, quotas, budgets and sandboxes,
policy rules, policies, models, engine steps, failures, outages and interruptions, journal
failures, GPU memory readings, deadlines and restarts through the journal codec.
bench/soak_kernel.py runs it for longer.
"""
import errno

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.tenant_config import TenantConfig, set_in_group
from kernel_machine import PROMPTS, KernelMachine

pytestmark = pytest.mark.invariants_every(0)  # the machine checks the invariants after each rule itself


def test_random_event_sequences_keep_the_books_and_replay_the_same():
    """200 sequences of 50 rules: no checked event raises, invariants hold after each, replay gives the same trace."""
    run_state_machine_as_test(KernelMachine, settings=settings(
        max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]))


def test_a_model_whose_token_needs_more_than_a_page_runs():
    """Found by the machine: a model with more KV per token than a page has no shareable prefix blocks
    (it used to divide the prompt into blocks of zero tokens at dispatch)."""
    machine = KernelMachine()
    machine.add_or_remove_model(layers=300, split=False)
    machine.submit([(None, None, 2, 5, PROMPTS[1], None, "extra")])
    machine.step(gpu=0, tokens=1, final=False, skip=9, rounds=2)
    assert [t.exit for t in machine.kernel.tasks.values()] == ["done"]
    machine.teardown()


@pytest.mark.parametrize("group", ["quota", "budget"])
def test_a_ledger_window_of_max_is_refused(group):
    """Found by the fuzz tier beside the machine: `window max` parsed, was journaled, and raised in apply
    (a window of None); it is refused with EINVAL before anything is journaled."""
    record = getattr(TenantConfig("t"), group)
    with pytest.raises(ApeinxError, match="window must be a duration of 1s..366d, not max") as refused:
        set_in_group(record, "window max")
    assert refused.value.errno == errno.EINVAL
