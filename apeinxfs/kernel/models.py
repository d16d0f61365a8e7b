"""Models: the models the kernel serves, added and removed at runtime (/ctl/models) as events.

A model is kernel state (admission checks its context, KV pages come from its shape), so
adding or removing one is a journaled event like a tenant's: it survives restarts, and
replay rebuilds it. `Models` is a read-only mapping of name -> ModelConfig whose only
changes are `add` and `remove`, each after its check; the first configured model is the
default; a model's endpoints are bound to GPUs the node has (endpoints.py). Which engine runs a
model is the daemon's business (runtime.py starts and stops
drivers as `("models")` changes); engine outages are engines.py's.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .config import ModelConfig
from .endpoints import check_gpus_exist
from .errors import Busy, Exists, NotFound
from .spec import TaskSpec, check_entry_name
from .task import Task


class Models(Mapping[str, ModelConfig]):
    """Name -> ModelConfig of the models served now; the first configured one is the default."""

    def __init__(self, configs: Iterable[ModelConfig], gpus: int):
        self._models = {model.name: model for model in configs}
        self.default = next(iter(self._models))
        self.gpus = gpus  # how many GPUs the node has: a model's endpoints are bound to some of them

    def __getitem__(self, name: str) -> ModelConfig:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def name_of(self, spec: TaskSpec) -> str:
        """The model a submit runs on: its own, or the default."""
        return spec.model or self.default

    def check_add(self, model: ModelConfig) -> None:
        name = model.name
        check_entry_name("model")(None, None, name)
        if name in self._models:
            raise Exists(f"model {name} exists: remove it first to change it")
        check_gpus_exist(name, model.endpoints, self.gpus)

    def check_remove(self, name: str, tasks: Iterable[Task]) -> None:
        """Refuse removing an unknown model, the default, or one with live tasks among `tasks`."""
        if name not in self._models:
            raise NotFound(f"unknown model {name!r}")
        if name == self.default:
            raise Busy(f"model {name} is the default model (submits without model= go to it)")
        live = sum(1 for task in tasks if task.model == name and not task.done)
        if live:
            raise Busy(f"model {name} has {live} live tasks; kill them first")

    def add(self, model: ModelConfig) -> None:
        self._models[model.name] = model

    def remove(self, name: str) -> None:
        del self._models[name]
