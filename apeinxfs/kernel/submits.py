"""The checks a Submit or an Adopt passes before it is journaled: its model, parent, tenant, context
and KV pages, and for an Adopt a pid of another node's block (docs/apeinxfs.5.md, ctl/submit and
CLUSTER). They read the kernel's components and change nothing. `Anywhere` makes them a dry run
on the node placing a cluster write's lines, which any node may run: the checks of this node's
own pids and GPUs (KV pages) are left out, and those of a model that only other nodes hold or of a
tenant only a remote parent's node knows (`admit_anywhere`, with the tenant's quotas and budgets). Not here: a tenant's quotas and
budgets (tenancy.py, through Kernel.admit) or adding the task (Kernel._add_task).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from . import events as ev
from .errors import Invalid, NoSpace, NotFound
from .kvmem import least_prompt_tokens
from .tenant_config import check_new_name

if TYPE_CHECKING:
    from .config import ModelConfig
    from .memory import KVManager
    from .models import Models
    from .spec import TaskSpec
    from .tasktable import TaskTable
    from .tenancy import Elsewhere, Tenancy


@attrs.frozen
class Anywhere:
    """A dry run of a submit's admission on the node placing a cluster write (`admit_anywhere`): the
    checks that hold on whichever node runs it. `models_elsewhere`: the models other up nodes hold, of which
    one this node lacks is not refused here (its node checks it). `parents`: the tenant of each live task on
    another node that a line names as its `parent=`, as that node publishes it."""

    models_elsewhere: frozenset[str] = frozenset()
    parents: Mapping[int, str] = attrs.field(factory=dict)

    def parent_tenant(self, spec: TaskSpec) -> str | None:
        """The tenant of the task on another node that `spec` names as its parent; None if it names none such."""
        return None if spec.parent is None else self.parents.get(spec.parent)

    def child_here(self, event: ev.Submit) -> ev.Submit:
        """The submit of a child of a task in `parents` as a task of its parent's tenant without a parent (so
        this node's quotas and budgets count it there). Any other submit as it is."""
        tenant = self.parent_tenant(event.spec)
        if tenant is None:
            return event
        return attrs.evolve(event, spec=attrs.evolve(event.spec, parent=None, tenant=tenant))


def check_child_tenant(named: str | None, parents: str) -> None:
    """Invalid if a child's line names a tenant other than its parent's."""
    if named is not None and named != parents:
        raise Invalid(f"a child runs in its parent's tenant {parents!r}, not {named!r}")


class SubmitChecks:
    """Whether a task may be added here: the handler table's check of Submit and of Adopt."""

    def __init__(self, models: Models, tasks: TaskTable, tenancy: Tenancy, kv: KVManager):
        self._models, self._tasks, self._tenancy, self._kv = models, tasks, tenancy, kv

    def check_submit(self, event: ev.Submit, anywhere: Anywhere | None = None) -> None:
        """NotFound, Invalid or NoSpace, saying why, unless a task of `event.spec` can be added here (with
        `anywhere`: may be added on some node, as far as this one knows; a child of a task on another node is
        checked in that task's tenant, in the order its node checks it: model, parent, tenant)."""
        spec = event.spec
        name = self._models.name_of(spec)
        model = self._models.get(name)
        if model is None and (anywhere is None or name not in anywhere.models_elsewhere):
            raise NotFound(f"unknown model {spec.model!r}: see /models")
        remote = None if anywhere is None else anywhere.parent_tenant(spec)  # a parent's on another node
        parent = None if spec.parent is None or remote is not None else self._tasks.live(spec.parent)
        parents = parent.tenant if parent is not None else remote
        if parents is not None:
            check_child_tenant(spec.tenant, parents)
        tenant = self._tenancy.tenant_of(spec, parent) if remote is None else remote
        if tenant not in self._tenancy.tenants:
            if remote is None:
                raise NotFound(f"unknown tenant {tenant!r}")
            check_new_name(tenant)  # a remote parent's: its node knows it, but here it is made new
            # (Tenancy.admitted), so held to the rule that history is not
        if model is not None:
            self._check_fits(spec, model, on_this_node=anywhere is None)

    def _check_fits(self, spec: TaskSpec, model: ModelConfig, on_this_node: bool) -> None:
        """Invalid if the prompt plus max_tokens pass the model's context; NoSpace if they can never fit in this
        node's largest GPU pool (checked `on_this_node` only). Refusals that never lift: the prompt is counted
        at least_prompt_tokens, not the estimate, which may be 4 times the engine's count."""
        prompt = least_prompt_tokens(spec.prompt)
        if prompt + spec.max_tokens > model.context:
            raise Invalid(f"prompt (estimated at least {prompt} tokens) plus max_tokens ({spec.max_tokens}) exceeds "
                          f"the context of {model.name} ({model.context})")
        why = self._kv.misfit(model, prompt, spec.max_tokens) if on_this_node else None
        if why:
            raise NoSpace(f"prompt (estimated at least {prompt} tokens) plus max_tokens {why}")

    def admit_anywhere(self, event: ev.Submit, now_us: int, batch: dict[str, tuple[int, int]],
                       elsewhere: Mapping[str, Elsewhere], anywhere: Anywhere) -> None:
        """Kernel.admit(event) as a dry run on the node placing a cluster write's lines: the checks that hold
        on whichever node runs it (`Anywhere`: not this node's pids left, GPUs or KV pages). Changes nothing
        but `batch`, which counts the write's lines as admit's does."""
        self.check_submit(event, anywhere)
        remote = anywhere.parent_tenant(event.spec)
        if remote is not None and remote not in self._tenancy.tenants:
            return  # a tenant only the parent's node knows: its quotas and budgets are judged there
        self._tenancy.admit(anywhere.child_here(event), now_us, batch, elsewhere, on_this_node=False)

    def check_adopt(self, event: ev.Adopt) -> None:
        """Invalid unless pids are in blocks (a cluster node) and `pid` is neither a task here nor one of this
        node's blocks; then the checks of a submit of its spec."""
        if not self._tasks.foreign(event.pid):
            raise Invalid(f"task {event.pid} cannot be adopted here: its pid is this node's (or pids are not in "
                          f"blocks: a single node)")
        if event.tokens > event.spec.max_tokens:
            raise Invalid(f"task {event.pid} cannot be adopted with {event.tokens} tokens: its max_tokens is "
                          f"{event.spec.max_tokens}")
        self.check_submit(ev.Submit(spec=event.spec))


def adoption_words(event: ev.Adopt) -> str:
    """The detail of an adopted task's `failover` line: whence, and from which token it goes on."""
    how = (f"resumes after token {event.tokens}, where its output was last replicated" if event.tokens else
           "restarted from the start, its output was not replicated")
    return f"moved here from node {event.origin} (its lease expired; epoch {event.epoch}): {how}"
