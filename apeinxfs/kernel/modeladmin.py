"""Model administration: models added and removed at runtime (/ctl/models), as kernel events.

A model is kernel state (admission checks its context, KV pages come from its shape), so
adding or removing one is a journaled event like a tenant's: it survives restarts, and
replay rebuilds it. Which engine runs it is the daemon's business (runtime.py starts and
stops drivers as `("models")` changes); the kernel only keeps the books. A mixin of
`Kernel` (kernel.py), like tenancy.py.
"""
from __future__ import annotations

from . import events as ev
from .errors import Busy, Exists, Invalid, NotFound
from .spec import check_name


class ModelAdmin:
    """Checks and effects of SetModel and RemoveModel."""

    def _check_setmodel(self, event: ev.SetModel) -> None:
        name = event.model.name
        check_name("model")(None, None, name)
        if name in (".", ".."):
            raise Invalid(f"model {name!r} cannot be a directory name")
        if name in self.models:
            raise Exists(f"model {name} exists: remove it first to change it")

    def _check_removemodel(self, event: ev.RemoveModel) -> None:
        if event.name not in self.models:
            raise NotFound(f"unknown model {event.name!r}")
        if event.name == self.config.models[0].name:
            raise Busy(f"model {event.name} is the default model (submits without model= go to it)")
        live = sum(1 for task in self.tasks.values() if task.model == event.name and not task.done)
        if live:
            raise Busy(f"model {event.name} has {live} live tasks; kill them first")

    def _apply_setmodel(self, event: ev.SetModel) -> None:
        model = event.model
        self.models[model.name] = model
        self.kv.add_model(model)
        self._model_changed(event, event.what)

    def _apply_removemodel(self, event: ev.RemoveModel) -> None:
        del self.models[event.name]
        self.kv.remove_model(event.name)
        self._model_changed(event, f"remove {event.name}")

    def _model_changed(self, event, what: str) -> None:
        self.audit.record(self.now_us, event, "models", "ok", what)
        self._emit("model", None, f"{what} by uid {event.uid}")
        self.changed.add("models")
