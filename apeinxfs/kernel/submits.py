"""The checks a Submit or an Adopt passes before it is journaled: its model, parent, tenant, context
and KV pages, and for an Adopt a pid of another node's block (docs/apeinxfs.5.md, ctl/submit and
CLUSTER). They read the kernel's components and change nothing. Not here: a tenant's quotas and
budgets (tenancy.py, through Kernel.admit) or adding the task (Kernel._add_task).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import events as ev
from .errors import Invalid, NoSpace, NotFound
from .kvmem import estimate_prompt_tokens

if TYPE_CHECKING:
    from .config import KernelConfig
    from .gpus import Gpu
    from .memory import KVManager
    from .models import Models
    from .tasktable import TaskTable
    from .tenancy import Tenancy


class SubmitChecks:
    """Whether a task may be added here: the handler table's check of Submit and of Adopt."""

    def __init__(self, config: KernelConfig, models: Models, tasks: TaskTable, tenancy: Tenancy,
                 kv: KVManager, gpus: list[Gpu]):
        self._config, self._models, self._tasks = config, models, tasks
        self._tenancy, self._kv, self._gpus = tenancy, kv, gpus

    def check_submit(self, event: ev.Submit) -> None:
        """NotFound, Invalid or NoSpace, saying why, unless a task of `event.spec` can be added here."""
        spec = event.spec
        model = self._models.get(self._models.name_of(spec))
        if model is None:
            raise NotFound(f"unknown model {spec.model!r}: see /models")
        parent = None if spec.parent is None else self._tasks.live(spec.parent)
        if parent is not None and spec.tenant is not None and spec.tenant != parent.tenant:
            raise Invalid(f"a child runs in its parent's tenant {parent.tenant!r}, not {spec.tenant!r}")
        tenant = self._tenancy.tenant_of(spec, parent)
        if tenant not in self._tenancy.tenants:
            raise NotFound(f"unknown tenant {tenant!r}")
        context = estimate_prompt_tokens(spec.prompt) + spec.max_tokens
        if context > model.context:
            raise Invalid(f"prompt plus max_tokens ({context}) exceeds the context of {model.name} ({model.context})")
        need, largest = self._kv.admit_pages(spec, model), max(g.pool.pages_total for g in self._gpus)
        if need > largest:
            raise NoSpace(f"needs {need} KV pages of {self._config.page_mib} MiB; the largest GPU pool has {largest}")

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
