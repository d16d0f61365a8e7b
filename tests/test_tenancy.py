"""Tier 1: tenants in the kernel: ledgers, admission (policy, sandbox, quota, budget), holds,
billing, tenant administration, audit, and who a caller is (access.py). Explicit times, no clock.

The same behaviour through a live mount, as other Unix users, is in test_tenants_mount.py.
"""
import csv
import decimal
import errno
import io

import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.access import identify
from apeinxfs.kernel.config import AccessConfig, GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Chunk, Rejected, RemoveTenant, Restart, SetRules, SetTenant, Step, Submit
from apeinxfs.kernel.ledger import Limit, TokenLedger
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig, set_in_group, show_group, tenant_from_dict
from apeinxfs.nodes.tasks import status

S = 1_000_000
PRICE = {"input_per_1k": "0.5", "output_per_1k": "1.5", "gpu_second": "0.01", "kv_page_second": "0.001"}


def config(*tenants, slots=4, gpus=1, access=AccessConfig()) -> KernelConfig:
    return KernelConfig(models=[ModelConfig(name="sim", price=PRICE), ModelConfig(name="big")], page_mib=1,
                        gpus=[GpuConfig(index=i, kv_mib=256, slots=slots) for i in range(gpus)],
                        tenants=[TenantConfig("default"), *tenants], access=access)


def admit(kernel, now_us=0, batch=None, uid=1000, **spec):
    """Admit and apply one submit; its pid."""
    event = kernel.admit(Submit(spec=TaskSpec(**{"name": "job", "max_tokens": 4, **spec}), uid=uid), now_us, batch)
    return kernel.apply(event, now_us)


def refusal(call) -> ApeinxError:
    with pytest.raises(ApeinxError) as caught:
        call()
    return caught.value


def serve(kernel, now_us, tokens=1) -> None:
    """One step of `tokens` tokens for every running task on every GPU."""
    for gpu in kernel.gpus:
        chunks = [Chunk(pid=t.pid, text=" w" * tokens, tokens=tokens, prefill=0 if t.prefilled else t.tokens_in)
                  for t in gpu.running.values()]
        if chunks:
            kernel.apply(Step(gpu=gpu.config.index, chunks=chunks), now_us)


def trace_rows(kernel) -> list[dict]:
    return list(csv.DictReader(io.StringIO(kernel.trace.buffer.decode())))


# -- ledgers -------------------------------------------------------------------------------------

def test_ledger_counts_within_a_window_and_starts_over_in_the_next():
    """Tokens charged in one window are not counted in a later one."""
    ledger, limit = TokenLedger(), Limit(100, 10)
    ledger.charge(limit, 1 * S, 60)
    assert ledger.view(limit, 9 * S) == (60, 0)
    assert ledger.view(limit, 10 * S) == (0, 0)


def test_ledger_overdraw_is_paid_back_in_the_next_window_only():
    """Use beyond the limit becomes the next window's debt, and is gone the window after."""
    ledger, limit = TokenLedger(), Limit(100, 10, overdraw=10)
    ledger.charge(limit, 0, 108)
    assert ledger.view(limit, 10 * S) == (0, 8)
    ledger.charge(limit, 10 * S, 50)
    assert ledger.view(limit, 20 * S) == (0, 0)


def test_ledger_refuses_past_the_overdraw_and_says_by_how_much():
    """Asking past limit + overdraw is refused with the numbers; up to it is admitted."""
    ledger, limit = TokenLedger(), Limit(1000, 60, overdraw=10)
    assert ledger.refusal(limit, 0, reserved=0, want=1100) is None
    why = ledger.refusal(limit, 0, reserved=0, want=1101)
    assert "would pass 1100 (1000 + 10% overdraw)" in why


def test_ledger_debt_shrinks_the_next_windows_allowance():
    """After an overdrawn window, the next admits only limit - debt + overdraw."""
    ledger, limit = TokenLedger(), Limit(1000, 60, overdraw=10)
    ledger.charge(limit, 0, 1100)
    assert ledger.refusal(limit, 60 * S, reserved=0, want=1000) is None
    assert "paying back" in ledger.refusal(limit, 60 * S, reserved=0, want=1001)


def test_ledger_refund_after_a_window_length_change_is_not_taken_from_the_new_window():
    """900 charged at 70 s in a 60 s window, 800 of it given back at 80 s once the window is 3600 s: the ledger
    entered a new window at 80 s, which holds none of that charge, so its 50 tokens used stay 50, never below 0."""
    ledger = TokenLedger()
    ledger.charge(Limit(1000, 60), 70 * S, 900)
    ledger.charge(Limit(1000, 3600), 80 * S, 50)
    ledger.charge(Limit(1000, 3600), 81 * S, -800, charged_us=70 * S)
    assert ledger.used == 50
    ledger.charge(Limit(1000, 3600), 82 * S, 10)
    ledger.charge(Limit(1000, 3600), 83 * S, -100, charged_us=82 * S)
    assert ledger.used == 0


# -- tenant records and their files ----------------------------------------------------------------

def test_tenant_groups_read_and_write_back_the_same():
    """A group's file text, written back line by line, gives the same record (writes mirror reads)."""
    tenant = tenant_from_dict({"name": "a", "quota": {"tokens": 500, "window": "1m", "gpu": 50},
                               "sandbox": {"models": ["sim"], "max_wall": "10m"}})
    for group in ("quota", "sandbox", "budget", "members"):
        record = getattr(tenant, group)
        rebuilt = type(record)()
        for line in show_group(record).splitlines():
            rebuilt = set_in_group(rebuilt, line)
        assert rebuilt == record


def test_tenant_settings_refuse_bad_values_with_reasons():
    """Out-of-range values and unknown keys are EINVAL naming the key."""
    quota = tenant_from_dict({"name": "a"}).quota
    assert refusal(lambda: set_in_group(quota, "gpu 101")).errno == errno.EINVAL
    assert "unknown" not in str(refusal(lambda: set_in_group(quota, "gpu 101")))
    assert "KEY one of tokens" in str(refusal(lambda: set_in_group(quota, "speed 5")))
    assert refusal(lambda: tenant_from_dict({"name": "a", "quota": {"color": 1}})).errno == errno.EINVAL


# -- who a caller is ---------------------------------------------------------------------------------

def test_identify_gives_roles_from_uids_and_gids():
    """Root and [access] admins are admins; members users; viewers viewers; others unmapped in default."""
    tenants = {t.name: t for t in config(TenantConfig("a", members={"uids": [1001], "viewer_gids": [300]})).tenants}
    access = AccessConfig(admin_uids=(1500,), owner_uid=0)
    roles = {uid: identify(tenants, access, uid, gid, lambda: set()) for uid, gid in
             ((0, 0), (1500, 1500), (1001, 1001), (1002, 300), (1003, 1003))}
    assert [(r.role, r.tenant) for r in roles.values()] == [
        ("admin", "default"), ("admin", "default"), ("user", "a"), ("viewer", "a"), ("user", "default")]


def test_identify_asks_for_supplementary_groups_only_when_gids_matter():
    """Without gid-based members, the caller's groups are never looked up."""
    tenants = {t.name: t for t in config(TenantConfig("a", members={"uids": [1001]})).tenants}
    asked = []
    identify(tenants, AccessConfig(), 1003, 1003, lambda: asked.append(1) or set())
    assert asked == []


# -- admission -----------------------------------------------------------------------------------------

def test_tasks_quota_refuses_with_edquot_counting_earlier_lines_of_the_same_write():
    """tasks=2: a write of three lines is refused at its third line, before any is applied."""
    kernel = Kernel(config(TenantConfig("a", quota={"tasks": 2})))
    batch = {}
    for _ in range(2):
        kernel.admit(Submit(spec=TaskSpec(name="j", tenant="a")), 0, batch)
    error = refusal(lambda: kernel.admit(Submit(spec=TaskSpec(name="j", tenant="a")), 0, batch))
    assert error.errno == errno.EDQUOT and "2 live tasks; its quota allows 2" in error.reason


def test_budget_overdraw_is_admitted_then_refused_then_paid_back():
    """Budget 1000 + 10%: 1100 tokens pass, more is EDQUOT; the next window allows 1000 - overdraw."""
    kernel = Kernel(config(TenantConfig("a", budget={"tokens": 1000, "window": 60})))
    admit(kernel, 0, tenant="a", max_tokens=1099)  # 1 prompt token (BOS) + 1099
    assert [r["type"] for r in trace_rows(kernel)].count("overdraw") == 1
    assert refusal(lambda: admit(kernel, 0, tenant="a", max_tokens=1)).errno == errno.EDQUOT
    for tick in range(1, 158):  # 157 steps of 7 tokens: 1099, served within the first window
        serve(kernel, tick * S // 3, tokens=7)
    assert kernel.tasks[1].exit == "done"
    assert refusal(lambda: admit(kernel, 60 * S, tenant="a", max_tokens=1000)).errno == errno.EDQUOT
    assert admit(kernel, 60 * S, tenant="a", max_tokens=999) == 2


def test_token_quota_counts_served_tokens_per_window():
    """quota tokens=10 per 10 s: more is refused while the first task's tokens are reserved, then used."""
    kernel = Kernel(config(TenantConfig("a", quota={"tokens": 10, "window": 10})))
    admit(kernel, 0, tenant="a", max_tokens=9)
    error = refusal(lambda: admit(kernel, 0, tenant="a", max_tokens=1))
    assert error.errno == errno.EDQUOT and "token quota" in error.reason
    serve(kernel, 1 * S, tokens=9)
    assert refusal(lambda: admit(kernel, 2 * S, tenant="a", max_tokens=1)).errno == errno.EDQUOT
    assert admit(kernel, 10 * S, tenant="a", max_tokens=9) == 2


def test_sandbox_limits_models_and_max_tokens():
    """A model outside the sandbox is EACCES; max_tokens over its limit is EINVAL."""
    kernel = Kernel(config(TenantConfig("a", sandbox={"models": ["sim"], "max_tokens": 8})))
    assert refusal(lambda: admit(kernel, tenant="a", model="big")).errno == errno.EACCES
    assert refusal(lambda: admit(kernel, tenant="a", max_tokens=9)).errno == errno.EINVAL
    assert admit(kernel, tenant="a", max_tokens=8) == 1


def test_sandbox_max_wall_expires_the_task():
    """A task past its tenant's max_wall exits `expired`, saying why."""
    kernel = Kernel(config(TenantConfig("a", sandbox={"max_wall": 5})))
    admit(kernel, 0, tenant="a", max_tokens=100)
    serve(kernel, 5 * S)
    assert kernel.tasks[1].exit == "expired"
    assert "max_wall" in trace_rows(kernel)[-1]["detail"]


def test_policy_deny_names_the_rule_and_limit_clamps_with_a_note():
    """A deny rule refuses with EACCES naming it; a limit rule clamps max_tokens and says so in the trace."""
    kernel = Kernel(config(TenantConfig("a")))
    kernel.apply(SetRules(rules=("deny model=big", "limit tenant=a max_tokens=3")), 0)
    error = refusal(lambda: admit(kernel, tenant="a", model="big"))
    assert error.errno == errno.EACCES and error.reason.startswith("denied by policy rule 1: deny model=big")
    pid = admit(kernel, tenant="a", max_tokens=100)
    assert kernel.tasks[pid].spec.max_tokens == 3
    assert "policy rule 2" in [r for r in trace_rows(kernel) if r["type"] == "limit"][0]["detail"]


def test_policy_time_windows_use_the_boot_time_zone():
    """time= matches minutes of the day in the daemon's zone at boot (utc_offset_s)."""
    base = config()
    kernel = Kernel(KernelConfig(models=base.models, gpus=base.gpus, utc_offset_s=3600))
    kernel.apply(SetRules(rules=("deny time=01:00-02:00",)), 0)
    assert refusal(lambda: admit(kernel, 0)).errno == errno.EACCES  # 00:00 UTC is 01:00 here
    assert admit(kernel, 3600 * S) == 1


# -- holds ------------------------------------------------------------------------------------------

def test_gpu_quota_holds_a_tenant_back_without_blocking_others():
    """gpu=50 of 4 slots: tenant a runs 2 at most while b's tasks still get the free slots."""
    kernel = Kernel(config(TenantConfig("a", quota={"gpu": 50}), TenantConfig("b")))
    for _ in range(4):
        admit(kernel, tenant="a", max_tokens=100)
    admit(kernel, tenant="b", max_tokens=100)
    running = [t.tenant for t in kernel.gpus[0].running.values()]
    assert sorted(running) == ["a", "a", "b"]
    assert [r["type"] for r in trace_rows(kernel)].count("hold") == 1


def test_held_tasks_run_when_the_tenant_frees_a_slot():
    """When one of a held tenant's tasks exits, a held one is dispatched."""
    kernel = Kernel(config(TenantConfig("a", quota={"gpu": 25})))
    first = admit(kernel, tenant="a", max_tokens=1)
    second = admit(kernel, tenant="a", max_tokens=1)
    assert kernel.tasks[second].gpu is None
    serve(kernel, S)
    assert kernel.tasks[first].exit == "done" and kernel.tasks[second].gpu == 0


def test_kv_pages_quota_refuses_what_can_never_fit_and_holds_the_rest():
    """A task needing more pages than the quota is EDQUOT; others wait while the tenant holds pages."""
    kernel = Kernel(config(TenantConfig("a", quota={"kv_pages": 2})))
    assert refusal(lambda: admit(kernel, tenant="a", max_tokens=100)).errno == errno.EDQUOT
    admit(kernel, tenant="a", max_tokens=8)
    admit(kernel, tenant="a", max_tokens=8)
    assert [t.gpu for t in kernel.tasks.values()] == [0, None]


# -- billing -------------------------------------------------------------------------------------------

def bill_from_trace(kernel) -> dict:
    """(tenant, model) -> cost, summed from the trace's `bill` lines alone."""
    prices = {m.name: m.price for m in kernel.config.models}
    totals = {}
    for row in trace_rows(kernel):
        if row["type"] == "bill":
            q = dict(part.split("=") for part in row["detail"].split())
            p = prices[row["model"]]
            cost = (int(q["in"]) * p.input_per_1k / 1000 + int(q["out"]) * p.output_per_1k / 1000
                    + int(q["gpu_us"]) * p.gpu_second / S + int(q["kv_page_us"]) * p.kv_page_second / S)
            key = (row["tenant"], row["model"])
            totals[key] = totals.get(key, 0) + cost
    return {k: v.quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP) for k, v in totals.items()}


def test_bill_rows_equal_the_sum_of_the_trace_bill_lines():
    """The book's cost per tenant and model equals what the trace's bill lines add up to, to the cent."""
    kernel = Kernel(config(TenantConfig("a"), TenantConfig("b")))
    for tenant in "aabb":
        admit(kernel, tenant=tenant, max_tokens=7, prompt="one two three four")
    for tick in range(1, 9):
        serve(kernel, tick * 333_333)
    book = {(key[1], key[2]): usage.cost(kernel.models[key[2]].price) for key, usage in kernel.bills.of()}
    assert book == bill_from_trace(kernel) and len(book) == 2
    assert all(cost > 0 for cost in book.values())


def test_restart_bills_running_tasks_up_to_their_last_step_only():
    """A restart ends running segments at their last step: downtime is not billed as GPU time."""
    kernel = Kernel(config(TenantConfig("a")))
    admit(kernel, 0, tenant="a", max_tokens=100)
    serve(kernel, 2 * S)
    kernel.apply(Restart(), 1000 * S)
    (_, usage), = kernel.bills.of("a")
    assert usage.gpu_us == 2 * S


# -- administration and audit ----------------------------------------------------------------------

def test_tenants_are_added_changed_and_removed_with_audit_lines():
    """SetTenant adds and changes a tenant, RemoveTenant removes it; each is an audit line by uid."""
    kernel = Kernel(config())
    kernel.apply(SetTenant(tenant=TenantConfig("x", weight=300), what="add x weight=300", uid=0, caller_pid=42), 0)
    assert kernel.accounts.tenants["x"].weight == 300 and admit(kernel, tenant="x", max_tokens=1) == 1
    serve(kernel, S)
    kernel.check(RemoveTenant(name="x"))
    kernel.apply(RemoveTenant(name="x", uid=0), 2 * S)
    audit = list(csv.DictReader(io.StringIO(kernel.audit.buffer.decode())))
    assert [(a["uid"], a["pid"], a["action"], a["result"]) for a in audit] == [("0", "42", "tenant", "ok"),
                                                                               ("0", "0", "tenant", "ok")]
    assert "x" not in kernel.tenancy.tenants


def test_a_tenant_with_live_tasks_cannot_be_removed():
    """RemoveTenant of a tenant with live tasks is EBUSY; adding an existing one is EEXIST."""
    kernel = Kernel(config(TenantConfig("a")))
    admit(kernel, tenant="a", max_tokens=50)
    assert refusal(lambda: kernel.check(RemoveTenant(name="a"))).errno == errno.EBUSY
    assert refusal(lambda: kernel.check(SetTenant(tenant=TenantConfig("a"), what="add a"))).errno == errno.EEXIST


def test_denials_are_audited_and_other_refusals_are_not():
    """A Rejected that is a denial gets an audit line; a malformed line does not."""
    kernel = Kernel(config())
    kernel.apply(Rejected(path="/ctl/submit", reason="denied by policy rule 1", uid=1001, denial=True), 0)
    kernel.apply(Rejected(path="/ctl/submit", reason="bad line", uid=1001), 0)
    lines = kernel.audit.buffer.decode().splitlines()
    assert len(lines) == 2 and ",1001,0,,/ctl/submit,denied," in lines[1]


def test_status_shows_the_sandbox_of_the_task_s_tenant():
    """A task's status ends with its tenant's sandbox limits, when the tenant has any."""
    sandbox = tenant_from_dict({"name": "a", "sandbox": {"max_tokens": 64, "max_wall": "10m"}}).sandbox
    kernel = Kernel(config(TenantConfig("a")))
    pid = admit(kernel, tenant="a")
    assert status(kernel.tasks[pid], sandbox).splitlines()[-1] == "Sandbox:\tmax_tokens=64 max_wall=600s models=*"
    assert "Sandbox" not in status(kernel.tasks[pid])
