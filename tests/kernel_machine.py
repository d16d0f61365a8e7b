"""A hypothesis state machine that drives one Kernel with random sequences of every event kind.

Each rule builds an event as the daemon would (a user's write, an engine step, a tick of
the clock), admits it as `Runtime.commit` does - a refusal is applied as the `Rejected`
event the daemon journals instead - and applies it. Every event that passed its check is
applied, so any exception is a failure: the proof that applying a checked event cannot
raise. After each rule the kernel's invariants are checked; a restart rule rebuilds the
kernel from the events so far through the journal codec (to_row / from_row), requires the
same trace, and goes on with the rebuilt kernel after a `Restart`; at the end the whole run
is replayed the same way. A snapshot rule restores the kernel's snapshot encoding
(kernel/state.py) into a twin that is given every later event too: after each rule the twin
holds the very same state, field by field, and its invariants hold. Used by tests/test_kernel_machine.py (bounded) and
bench/soak_kernel.py (long runs).
"""
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from apeinxfs.kernel import Kernel
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.config import GpuConfig, KernelConfig, MemoryRetention, ModelConfig, SchedConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.sched import POLICIES
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.state import decode, encode
from apeinxfs.kernel.tenant_config import Budget, Quota, Sandbox, TenantConfig
from kernel_state import state_difference

TENANTS = ("default", "a", "b")
PROMPTS = ("", "hello", "one two three four five six seven eight nine ten",
           "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
           " ".join(f"w{n}" for n in range(30)))
RULES = ("deny tokens>30", "limit tenant=a max_tokens=5 max_prio=3", "deny model=extra tenant!=b", "allow prio>=0")
MS = 1000
ENDPOINTS = ({"url": "http://127.0.0.1:1", "gpus": [0]}, {"url": "http://127.0.0.1:2", "gpus": [1]})


def kernel_config(retention: MemoryRetention = MemoryRetention()) -> KernelConfig:
    """Two small GPUs of 1 MiB pages (8 tokens each): GPU 1 is a real one, so GpuMemory applies to it."""
    return KernelConfig(models=[ModelConfig(name="sim", context=4096)], page_mib=1, retention=retention,
                        sched=SchedConfig(policy="fair", min_run_tokens=2, deadline_boost_s=0.05),
                        gpus=[GpuConfig(index=0, kv_mib=12, slots=2),
                              GpuConfig(index=1, kv_mib=9, slots=3, simulated=False)],
                        tenants=[TenantConfig("default"), TenantConfig("a", weight=300)], billing_period_s=1)


def replay(events: list, retention: MemoryRetention = MemoryRetention(), config=kernel_config) -> Kernel:
    """A fresh kernel of `config(retention)` that has applied `events` ((time_us, event) pairs) as journal rows."""
    kernel = Kernel(config(retention))
    for time_us, event in events:
        kernel.apply(ev.from_row(*ev.to_row(event)), time_us)
    return kernel


def ended(kernel: Kernel, pid: int) -> bool:
    """Whether task `pid` and all its descendants have exited (recursive: the reference, for small trees)."""
    task = kernel.tasks[pid]
    return task.done and all(ended(kernel, child) for child in task.children)


optional = st.none() | st.integers(1, 40)
submits = st.tuples(st.sampled_from((None, None, *TENANTS)), st.none() | st.integers(0, 10**6), st.integers(1, 40),
                    st.integers(0, 9), st.sampled_from(PROMPTS), st.none() | st.integers(1, 400),
                    st.sampled_from((None, None, "sim", "extra")))
tenants = st.builds(
    TenantConfig, name=st.sampled_from(TENANTS), weight=st.integers(1, 1000),
    quota=st.builds(Quota, tokens=st.none() | st.integers(20, 400), window=st.integers(1, 5),
                    tasks=st.none() | st.integers(1, 6), kv_pages=st.none() | st.integers(2, 30),
                    gpu=st.none() | st.integers(1, 100)),
    budget=st.builds(Budget, tokens=st.none() | st.integers(20, 800), window=st.integers(1, 5),
                     overdraw=st.integers(0, 50)),
    sandbox=st.builds(Sandbox, max_tokens=optional, max_wall=st.none() | st.integers(1, 3)))


class KernelMachine(RuleBasedStateMachine):
    """One kernel, the events it applied, and the clock that stamps them."""

    retention = MemoryRetention()  # what the kernel keeps of exited tasks and trace lines
    config = staticmethod(kernel_config)  # the kernel's config, given `retention`

    def __init__(self):
        super().__init__()
        self.kernel = Kernel(self.config(self.retention))
        self.events: list = []
        self.now_us = 0
        self.twin: Kernel | None = None  # restored from a snapshot, then given the same events

    def commit(self, event) -> None:
        """Admit `event` as the daemon does (a refusal becomes a Rejected event) and apply it."""
        try:
            event = self.kernel.admit(event, self.now_us, {})
        except ApeinxError as refused:
            event = ev.Rejected(path="machine", reason=refused.reason, errno=refused.errno, denial=refused.denial)
        self.events.append((self.now_us, event))
        self.kernel.apply(event, self.now_us)
        if self.twin is not None:
            self.twin.apply(event, self.now_us)

    def pid(self, index: int) -> int:
        """Mostly a live task's pid; one in four times any pid up to one past the last."""
        live = [pid for pid, task in self.kernel.tasks.items() if not task.done]
        return live[index % len(live)] if live and index % 4 else index % self.kernel.tasks.next_pid + 1

    @rule(dt=st.integers(0, 30 * MS))
    def advance(self, dt):
        self.now_us += dt

    @rule(submits=st.lists(submits, min_size=1, max_size=6))
    def submit(self, submits):
        """A few submits, each alone (a write of many lines is admitted as a whole in the daemon)."""
        for tenant, parent, tokens, prio, prompt, deadline_ms, model in submits:
            spec = TaskSpec(name="job", max_tokens=tokens, prio=prio, tenant=tenant, prompt=prompt, model=model,
                            parent=None if parent is None else self.pid(parent),
                            deadline_us=None if deadline_ms is None else deadline_ms * MS)
            self.commit(ev.Submit(spec=spec, uid=1000))

    @rule(index=st.integers(0, 10**6))
    def kill(self, index):
        self.commit(ev.Kill(pid=self.pid(index), uid=1000))

    @rule(index=st.integers(0, 10**6), verb=st.sampled_from(("stop", "cont", "prio", "kill")), prio=st.integers(0, 9))
    def control(self, index, verb, prio):
        command = TaskCommand(verb, prio if verb == "prio" else None)
        self.commit(ev.Control(pid=self.pid(index), command=command, uid=1000))

    @rule(gpu=st.sampled_from((0, 0, 1, 1, 2)), tokens=st.integers(0, 8), final=st.booleans(), skip=st.integers(0, 9),
          rounds=st.integers(1, 8))
    def step(self, gpu, tokens, final, skip, rounds):
        """`rounds` engine steps on `gpu` (one step for 2, which does not exist): a chunk for each task
        of its batch but one (`skip`), the last maybe final."""
        real = gpu < len(self.kernel.gpus)
        for _ in range(rounds if real else 1):
            batch = self.kernel.batch(gpu) if real else []
            chunks = [ev.Chunk(pid=t.pid, text="w" * tokens, tokens=tokens, final=final and t is batch[-1],
                               prefill=0 if t.prefilled else t.context_tokens)
                      for n, t in enumerate(batch) if n != skip]
            self.now_us += 20 * MS
            self.commit(ev.Step(gpu=gpu, chunks=chunks))

    @rule(index=st.integers(0, 10**6), pid=st.integers(1, 10**6))
    def failover(self, index, pid):
        """The cluster moves a task away from this node (it ends without an exit line), and offers one of
        another node's (refused: this kernel gives pids without blocks, so any pid may be its own)."""
        self.commit(ev.MovedAway(pid=self.pid(index), node="b"))
        self.commit(ev.Adopt(pid=pid, spec=TaskSpec(name="moved", max_tokens=4), origin="b", epoch=2, uid=1000))

    @rule(index=st.integers(0, 10**6))
    def fail(self, index):
        self.commit(ev.Failed(pid=self.pid(index), reason="engine gone"))

    @rule(dt=st.integers(0, 2_000 * MS))
    def tick(self, dt):
        self.now_us += dt
        self.commit(ev.Tick())

    @rule(policy=st.sampled_from((*POLICIES, *POLICIES, "nope")))
    def set_policy(self, policy):
        self.commit(ev.SetPolicy(policy=policy, uid=0))

    @rule(tenant=tenants)
    def set_tenant(self, tenant):
        """Add the tenant if it is missing, else replace its settings."""
        verb = "set" if tenant.name in self.kernel.tenancy.tenants else "add"
        self.commit(ev.SetTenant(tenant=tenant, what=f"{verb} {tenant.name}", uid=0))

    @rule(name=st.sampled_from(TENANTS[1:]))
    def remove_tenant(self, name):
        self.commit(ev.RemoveTenant(name=name, uid=0))

    @rule(rules=st.lists(st.sampled_from(RULES), max_size=2), replace=st.booleans())
    def set_rules(self, rules, replace):
        self.commit(ev.SetRules(rules=rules, replace=replace, uid=0))

    @rule(layers=st.integers(1, 64) | st.just(300), split=st.booleans())  # 300: a token's KV is more than a page
    def add_or_remove_model(self, layers, split):
        """Add model `extra` if it is missing (`split`: one endpoint per GPU), else remove it (refused while
        it has live tasks)."""
        if "extra" in self.kernel.models:
            self.commit(ev.RemoveModel(name="extra", uid=0))
        else:
            model = ModelConfig(name="extra", context=2048, layers=layers, endpoints=ENDPOINTS if split else ())
            self.commit(ev.SetModel(model=model, what="add extra", uid=0))

    @rule(gpu=st.integers(0, 1), free_mib=st.integers(0, 20))
    def gpu_memory(self, gpu, free_mib):
        self.commit(ev.GpuMemory(gpu=gpu, free_mib=free_mib))

    @rule(errno=st.sampled_from((5, 28, 30)))
    def journal_episode(self, errno):
        """The journal cannot be written for a while, then can: the degraded episode as it is journaled."""
        since = self.now_us
        self.commit(ev.JournalFailed(errno=errno, reason="the journal cannot be written"))
        self.now_us += 100 * MS
        self.commit(ev.JournalRecovered(errno=errno, since_us=since))

    @rule(model=st.sampled_from(("sim", "extra")), up=st.booleans(), gpus=st.sampled_from(((), (0,), (1,))))
    def engine_health(self, model, up, gpus):
        """A model's engine, or one endpoint of it (`gpus`), goes down (its queued tasks stall, or go to the
        other GPUs) or comes back."""
        self.commit(ev.EngineHealth(model=model, up=up, reason="" if up else "connection refused", gpus=gpus))

    @rule(model=st.sampled_from(("sim", "extra")), gpus=st.sampled_from(((), (0,), (1,), (0, 1), (2,))),
          tokens=st.integers(0, 120) | st.just(-1))
    def engine_kv(self, model, gpus, tokens):
        """An engine reports the tokens its KV cache holds (GPU 2 and -1 tokens are refused): the pages it
        reports beyond the books of its GPUs count as used there until a report agrees."""
        self.commit(ev.EngineKV(model=model, gpus=gpus, tokens=tokens))

    @rule(index=st.integers(0, 10**6))
    def interrupted(self, index):
        """A task's stream breaks midway: it goes back to the queue with what it has."""
        self.commit(ev.Interrupted(pid=self.pid(index), reason="stream broke"))

    @rule()
    def restart(self):
        """The daemon restarts: the journal so far rebuilds the same trace and audit trail; running tasks are
        requeued."""
        rebuilt = replay(self.events, self.retention, self.config)
        assert rebuilt.trace.buffer == self.kernel.trace.buffer and rebuilt.audit.view() == self.kernel.audit.view()
        self.kernel = rebuilt
        self.commit(ev.Restart())

    @rule()
    def snapshot(self):
        """A snapshot of the kernel now is restored into a twin that goes on with the same events."""
        self.twin = decode(encode(self.kernel))

    @invariant()
    def twin_is_the_same(self):
        """The kernel restored from a snapshot and given the same events since holds the same state."""
        if self.twin is not None:
            assert state_difference(self.kernel, self.twin) == ""
            self.twin.check_invariants()

    @invariant()
    def books_agree(self):
        self.kernel.check_invariants()

    @invariant()
    def trees_done_is_each_tree_ended(self):
        """TaskTable.trees_done (one walk for many pids) agrees with a plain recursive walk of each tree."""
        pids = list(self.kernel.tasks)
        assert self.kernel.tasks.trees_done(pids) == {pid for pid in pids if ended(self.kernel, pid)}

    def teardown(self):
        """The same events, replayed through the journal codec, give the same trace line for line."""
        assert replay(self.events, self.retention, self.config).trace.buffer.decode().splitlines() == \
            self.kernel.trace.buffer.decode().splitlines()
