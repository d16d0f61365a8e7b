"""Running the drivers inside the daemon: which driver object serves which models, and what it sees.

The configured models are grouped by driver (one driver object per driver name, as
before: the sim driver steps all its models' tasks on a GPU together); a model added live
(/ctl/models) gets a driver object of its own. Each group runs its driver's `serve` on
every GPU, and its `observe` if it has one, through a `ModelHost`: the runtime as that
driver sees it, showing only its own models' tasks (a GPU's batch may mix drivers). When
the models change, `DriverGroups.sync` stops the groups whose models changed or went and
starts new ones; a restarted driver picks up its models' running tasks again (the openai
driver resumes each after the text it has). The configured drivers are built before the mount (`check_drivers`),
so a bad option in the configuration fails the daemon's start, and /ctl/models builds one before it commits; a
model from the journal whose driver cannot be built (options refused since) is failed alone, the daemon starts,
and its tasks fail at once saying why (`CannotRun`: each task of its batch, a backlog as each failure frees a slot):
a permanent fault, not an outage to wait out. Such a model has no engine: its engines' KV reports from before are
reported empty (`CannotRun.observe`), its endpoints are no outage (runtime.report_state), a submit to it is
refused (ENXIO, nodes/ctl.py, by `rt.cannot_run`) and a cluster node's record leaves it out (cluster/records.py). A
failure or a KV report that the degraded journal dropped is made again at the recovery. Its numbers out of their
bounds since are no such fault: its driver is built with each set to the nearest bound (drivers.kept), its status
says which and the daemon's log says it at each start (a driver's fact, not the kernel's: no journal row, so a
journal stays one that older code replays); a new add and the configuration, built strictly before, never have one.
While the daemon is degraded (health.py) every batch looks empty: the drivers stop their
jobs, and start them again, after the text each task has, when it recovers. A driver's serve and
observe are supervised (supervise.py): a bug in one is shown in /ai/health and that one started
again, its tasks picked up where the kernel has them; a bug in one task's job fails that task
alone (drivers/flow.py `Outbox.guarded`).
"""
import logging

import trio

from . import drivers
from .kernel.events import Failed

log = logging.getLogger(__name__)


class ModelHost:
    """The driver host (drivers/base.Host) for the drivers of `models`: their tasks only."""

    def __init__(self, rt, models: dict):
        self.rt, self.models = rt, models

    def _mine(self, gpu: int) -> list:
        """Its tasks in `gpu`'s batch; none while degraded (health.py): they pause where they are."""
        if self.rt.cluster is not None:  # a cluster node whose lease may have expired: held (cluster/fencing.py)
            self.rt.cluster.fencing.check()
        if self.rt.health.fault is not None:
            return []
        return [task for task in self.rt.kernel.batch(gpu) if task.model in self.models]

    async def next_batch(self, gpu: int) -> list:
        while not (batch := self._mine(gpu)):
            await self.rt.notifier.wait(("gpu", gpu))
        return batch

    async def batch_changed(self, gpu: int) -> list:
        await self.rt.notifier.wait(("gpu", gpu))
        return self._mine(gpu)

    def deliver(self, event) -> None:
        self.rt.deliver(event)

    def observe(self, model: str, observation, gpus: tuple = ()) -> None:
        self.rt.observe(model, observation, gpus)

    def report_state(self, model: str, state: str, error: str | None = None, gpus: tuple = ()) -> None:
        self.rt.report_state(model, state, error, gpus)

    def report_kv(self, model: str, gpus: tuple, tokens: int) -> str | None:
        return self.rt.report_kv(model, gpus, tokens)

    def kv_reported(self) -> list[tuple[str, tuple]]:
        """The (model, gpus) of its models' engines whose last KV report (kernel/kvreport.py) holds tokens."""
        return self.rt.kernel.engines.kv_reports.holding(self.models)

    async def health_changed(self) -> None:
        """Sleep until the daemon goes degraded or recovers (health.py)."""
        await self.rt.notifier.wait("health")

    def engine_down(self, model: str, gpus: tuple = ()) -> bool:
        return self.rt.kernel.engines.is_down(model, gpus)

    def note_bug(self, name: str, exc: Exception, outcome: str) -> None:
        self.rt.supervisor.note(name, exc, outcome)


class CannotRun:
    """What serves the models of a driver that cannot be built: each of their tasks that reaches a GPU fails at
    once with `reason`, so none waits for ever for an engine and `remove` is not kept busy by them."""

    name = "cannot-run"

    def __init__(self, reason: str):
        self.reason = reason

    async def observe(self, host: ModelHost) -> None:
        """Report its models' engines' KV empty: they have none, and a full report from before (journaled) would
        keep every task off their GPUs (kernel/kvreport.py). Again at each change of the daemon's health: a
        report the degraded journal dropped (runtime.deliver) is made at the recovery."""
        while True:
            for model, gpus in host.kv_reported():
                host.report_kv(model, gpus, 0)
            await host.health_changed()

    def why(self, model: str) -> str:
        """Why a task of `model` cannot run, in words: its failure's reason, a submit's refusal (nodes/ctl.py)."""
        return f"model {model} cannot run: {self.reason}"

    async def serve(self, gpu: int, host: ModelHost) -> None:
        """Fail each task of the batch, and read the batch again before sleeping: a failure frees a slot that the
        kernel fills at once with the next queued task, waking this GPU while no one waits (Notifier keeps no
        wake), so that task is failed in the same loop. No busy loop: a failed task leaves the batch, and while
        degraded the batch is empty; a failure the journal could not take (runtime.deliver drops it) is made
        again when the batch comes back, at the recovery's wake of every GPU."""
        while True:
            for task in await host.next_batch(gpu):
                host.deliver(Failed(pid=task.pid, reason=self.why(task.model)))


def check_drivers(models: dict) -> None:
    """Build each configured group's driver and drop it (no I/O): a bad option is refused (Invalid, with the
    driver's words) before the daemon mounts, rather than as a failed model after."""
    for key, group in groups_of(models, models).items():
        drivers.load(key[1])(group)


def groups_of(models: dict, configured: dict) -> dict:
    """{key: {name: ModelConfig}}: the configured models by driver name, each model added live alone (one re-added
    under a configured name with other options too: a driver that cannot take them fails that model only)."""
    groups = {}
    for name, model in models.items():
        key = ("config", model.driver) if configured.get(name) == model else ("added", name)
        groups.setdefault(key, {})[name] = model
    return groups


class DriverGroups:
    """The driver groups running in `nursery`, kept in step with the kernel's models."""

    def __init__(self, rt, nursery):
        self.rt, self.nursery = rt, nursery
        self.configured = {model.name: model for model in rt.config.kernel.models}
        self.running: dict = {}  # key -> ({name: ModelConfig}, CancelScope)

    def sync(self) -> None:
        """Stop the groups whose models changed or went, start the missing ones. A group whose driver cannot
        be built (a model kept in the journal whose options are now refused, say) does not stop the others
        nor the daemon: its models' state says failed and why, and /ctl/models can remove or replace them."""
        wanted = groups_of(self.rt.kernel.models, self.configured)
        for key in [key for key, (models, _) in self.running.items() if wanted.get(key) != models]:
            models, scope = self.running.pop(key)
            scope.cancel()
            for name in models:
                self.rt.cannot_run.pop(name, None)
        for key, models in wanted.items():
            if key not in self.running:
                self._start_or_fail(key, models)
        self.rt.forget_engines()

    def _start_or_fail(self, key: tuple, models: dict) -> None:
        """Start group `key`, its models' numbers out of their bounds clamped (drivers.kept); if its driver cannot be
        built, its models are failed, saying why, and a `CannotRun` serves them: a permanent fault, not an outage to
        wait out."""
        clamps: dict = {}
        try:
            driver_class = drivers.load(next(iter(models.values())).driver)
            built, clamps = drivers.kept(driver_class, models)
            driver = driver_class(built)
            state, error = "starting", None  # until the driver's first check says otherwise
        except Exception as exc:
            driver, clamps = CannotRun(f"the driver cannot be built: {exc}"), {}  # failed: nothing clamped runs
            state, error = "failed", driver.reason
            self.rt.cannot_run.update(dict.fromkeys(models, driver))
        for name in models:
            self.rt.report_state(name, state, error)
            self._clamped(name, clamps.get(name))
        self.running[key] = (models, self._start(driver, models))

    def _clamped(self, name: str, words: str | None) -> None:
        """Keep what of model `name`'s options was clamped (its status shows it), and log it."""
        if words is None:
            self.rt.clamped.pop(name, None)
        elif self.rt.clamped.get(name) != words:
            self.rt.clamped[name] = words
            log.warning("model %s: options kept in the journal: %s", name, words)

    def _start(self, driver, models: dict) -> trio.CancelScope:
        scope = trio.CancelScope()
        self.nursery.start_soon(self._serve, driver, ModelHost(self.rt, models), scope)
        return scope

    async def _serve(self, driver, host: ModelHost, scope: trio.CancelScope) -> None:
        """Run `driver`'s serve on each GPU and its observe, each supervised (supervise.py): started again
        after a bug, as `sync` starts a changed group (its GPUs' running tasks picked up again)."""
        supervised = self.rt.supervisor.supervised
        with scope:
            async with trio.open_nursery() as nursery:
                for gpu in range(len(self.rt.kernel.gpus)):
                    nursery.start_soon(supervised, f"driver.{driver.name}.serve", driver.serve, gpu, host)
                if hasattr(driver, "observe"):
                    nursery.start_soon(supervised, f"driver.{driver.name}.observe", driver.observe, host)

    async def follow(self) -> None:
        """Sync whenever the models change (/ctl/models), until cancelled."""
        while True:
            self.sync()
            await self.rt.notifier.wait("models")
