"""Tiers 1-2: policy rules and quotas hold on changes to a live task, not only at submit.

A task's prio is the one thing a caller can change after its submit (`prio N` in its ctl
file); its model and tenant are fixed at submit, and a child (`parent=`) is admitted in its
parent's tenant. Kernel first, then through /tasks/PID/ctl with the refusal audited.
"""
import csv
import errno
import io

import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.events import Control, SetRules, SetTenant
from apeinxfs.kernel.spec import TaskCommand
from apeinxfs.kernel.tenant_config import TenantConfig, set_in_group
from test_tenancy import admit, config, refusal
from test_tenant_nodes import ALICE, audit, submit, tree, write  # noqa: F401 (tree is a fixture)
from test_nodes import text


def kernel_with(*rules: str) -> Kernel:
    kernel = Kernel(config(TenantConfig("a", members={"uids": (1001,)})))
    kernel.apply(SetRules(rules=rules), 0)
    return kernel


def prio(kernel, pid: int, value: int, uid: int = 1001):
    """Admit and apply `prio VALUE` on task `pid` by `uid`."""
    event = kernel.admit(Control(pid=pid, command=TaskCommand("prio", value), uid=uid), 0)
    return kernel.apply(event, 0)


def test_prio_over_a_limit_rules_max_prio_is_refused_naming_the_rule():
    """`prio 9` under `limit tenant=a max_prio=3` is EACCES with rule 2; the task keeps its prio."""
    kernel = kernel_with("allow model=big", "limit tenant=a max_prio=3")
    pid = admit(kernel, tenant="a", prio=2)
    error = refusal(lambda: prio(kernel, pid, 9))
    assert error.errno == errno.EACCES
    assert error.reason == "prio 9 is over max_prio=3 of policy rule 2: limit tenant=a max_prio=3"
    assert kernel.tasks[pid].spec.prio == 2


@pytest.mark.parametrize("rule, value", [("limit tenant=a max_prio=3", 3), ("limit tenant=b max_prio=3", 9)],
                         ids=["at the limit", "another tenant's limit"])
def test_a_prio_the_rules_allow_is_applied(rule, value):
    """A prio at the limit's max_prio, or under a limit of another tenant, changes the task as before."""
    kernel = kernel_with(rule)
    pid = admit(kernel, tenant="a", prio=1)
    prio(kernel, pid, value)
    assert kernel.tasks[pid].spec.prio == value


def test_a_deny_rule_on_prio_refuses_the_change_with_its_number():
    """`deny prio>7` refuses `prio 8` on a live task as it would a submit with prio=8."""
    kernel = kernel_with("deny model=big", "deny prio>7")
    pid = admit(kernel, tenant="a", prio=5)
    error = refusal(lambda: prio(kernel, pid, 8))
    assert (error.errno, error.reason) == (errno.EACCES, "prio 8 denied by policy rule 2: deny prio>7")


def test_a_child_is_held_to_its_parents_tenants_rules_and_quota():
    """parent=: the child is clamped by the parent tenant's limit and counts against its task quota."""
    kernel = kernel_with("limit tenant=a max_prio=3")
    kernel.apply(SetTenant(tenant=TenantConfig("a", members={"uids": (1001,)},
                                               quota=set_in_group(TenantConfig("a").quota, "tasks 2")),
                           what="set quota"), 0)
    parent = admit(kernel, tenant="a", prio=1)
    child = admit(kernel, parent=parent, prio=9)
    assert (kernel.tasks[child].tenant, kernel.tasks[child].spec.prio) == ("a", 3)
    error = refusal(lambda: admit(kernel, parent=parent))
    assert error.errno == errno.EDQUOT and "quota allows 2" in error.reason


# -- through the ctl file: refused, journaled and audited like a refused submit ------------------------

def test_a_users_prio_over_the_limit_is_eacces_and_audited(tree):
    """A user's `prio 9` in /tasks/PID/ctl is EACCES naming the rule, with a denied audit line and a trace line."""
    write(tree, "/ctl/policy", b"limit tenant=a max_prio=3\n")
    pid = submit(tree, ALICE, b"job 50 2\n")
    error = refusal(lambda: write(tree, f"/tasks/{pid}/ctl", b"prio 9\n", caller=ALICE))
    assert error.errno == errno.EACCES and "policy rule 1" in error.reason
    row = audit(tree)[-1]
    assert (row["uid"], row["action"], row["result"]) == ("1001", f"/tasks/{pid}/ctl", "denied")
    assert row["detail"] == "prio 9 is over max_prio=3 of policy rule 1: limit tenant=a max_prio=3"
    assert "Prio:\t2\n" in text(tree, f"/tasks/{pid}/status")
    trace = list(csv.DictReader(io.StringIO(tree.rt.kernel.trace.buffer.decode())))
    assert trace[-1]["type"] == "reject" and "policy rule 1" in trace[-1]["detail"]
