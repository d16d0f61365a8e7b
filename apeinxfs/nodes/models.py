"""/models/NAME/{status,config,engine} and /ctl/models: models as directories, added and removed live.

`status` is the model's engine state (ready, starting, unreachable, failed: what its
driver's checks found, drivers/enginestate.py; for a model with endpoints, each one's
too) and live use, `config` its configuration; `engine` shows the last
scrape of the model's engine (drivers/scrape.py, kept on the Runtime, not in the kernel):
flat keyed, `-` where the engine does not say (a model's endpoints together: drivers/metrics.py
`together`), and `source none` for a model whose driver reads no engine metrics (sim). /ctl/models adds (`SetModel`) and removes (`RemoveModel`)
models, admins only; the runtime starts and stops their drivers. Inodes are computed
(NamedDirs): MODEL_BASE + number * SLOTS + slot.
"""
import attrs

from .. import drivers
from ..drivers import enginestate
from ..kernel.config import ModelConfig
from ..kernel.endpoints import gpus_text, redacted
from ..kernel.errors import Invalid
from ..kernel.events import RemoveModel, SetModel
from ..kernel.grammar import parse_int, split_pairs
from .addremove import AddRemove
from .base import BuiltDir, NamedDirs, Show
from .tenants import TENANT_BASE

MODEL_BASE = 1 << 18
SLOTS = 8
FILES = ("status", "config", "engine")
SHAPE = ("context", "layers", "kv_heads", "head_dim")
OUTAGE = ("engine_wait_s", "resume_limit")  # the kernel's, not the driver's (kernel/engines.py)


def status(kernel, name: str, engine=None, endpoint_states=None, clamped: str | None = None) -> str:
    """Key:<TAB>value lines: the model's driver, its engine's state (drivers/enginestate.py), its tasks,
    its GPUs and, for a model with endpoints, each one's GPUs and state (`endpoint_states`, by (model, gpus));
    then, for a model kept in the journal whose options were clamped to their bounds, which (`clamped`)."""
    running = sum(1 for g in kernel.gpus for t in g.running.values() if t.model == name)
    queued = sum(1 for t in kernel.runq.tasks() if t.model == name)
    model = kernel.models[name]
    gpus = sorted(model.gpu_set) if model.gpu_set is not None else [g.config.index for g in kernel.gpus]
    rows = [("Name", name), ("Driver", model.driver), *enginestate.rows(engine), ("Running", running),
            ("Queued", queued), ("Stalled", kernel.engines.waiting(name)), ("Gpus", gpus_text(gpus))]
    if model.endpoints:
        states = [(endpoint_states or {}).get((name, e.gpus)) for e in model.endpoints]
        rows.append(("Endpoints", "; ".join(f"{e.label} {seen.state if seen else 'starting'}"
                                            for e, seen in zip(model.endpoints, states))))
    if clamped:
        rows.append(("Options", clamped))
    return "".join(f"{k}:\t{v}\n" for k, v in rows)


def config(kernel, name: str) -> str:
    model = kernel.models[name]
    page = kernel.config.page_bytes
    rows = [("driver", model.driver), ("context", model.context), ("layers", model.layers),
            ("kv_heads", model.kv_heads), ("head_dim", model.head_dim), ("dtype", model.dtype),
            ("kv_bytes_per_token", model.token_bytes), ("tokens_per_page", page // model.token_bytes),
            ("engine_wait_s", f"{model.engine_wait_s:g}"), ("resume_limit", model.resume_limit)]
    rows += sorted(model.options.items())
    return "".join(f"{k} {redacted(str(v))}\n" for k, v in rows)


def _value(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def engine(observation, now_us: int) -> str:
    """The model's engine metrics at its last scrape (`observation`, None if never), flat keyed."""
    if observation is None:
        return "source none\n"
    reading, scraped = observation.reading, observation.reading or observation.error
    usage = reading and reading.kv_usage
    rows = [("source", observation.source), ("engine", reading and reading.engine),
            ("scraped_age_s", (now_us - observation.at_us) / 1e6 if scraped else None),
            ("kv_usage_pct", usage * 100 if usage is not None else None),
            ("kv_tokens", reading and reading.kv_tokens), ("kv_capacity_tokens", reading and reading.kv_capacity),
            ("requests_running", reading and reading.running), ("requests_waiting", reading and reading.waiting),
            ("error", observation.error)]
    return "".join(f"{key} {_value(value)}\n" for key, value in rows)


@attrs.define(eq=False)
class ModelDir(BuiltDir):
    """/models/NAME: status, config, engine."""

    names: tuple = FILES
    rt: object = None
    name: str = ""

    def build(self, file):
        rt, name = self.rt, self.name
        if file == "engine":
            return Show(show=lambda: engine(rt.engine_metrics.get(name), rt.clock.now_us()), volatile=True)
        if file == "status":
            return Show(show=lambda: status(rt.kernel, name, rt.engine_states.get(name), rt.endpoint_states,
                                            rt.clamped.get(name)))
        return Show(show=lambda: config(rt.kernel, name))


@attrs.define(eq=False)
class ModelsDir(NamedDirs):
    """/models: one directory per model, the configured ones first, then those added live."""

    base: int = MODEL_BASE
    limit: int = TENANT_BASE
    slots: int = SLOTS
    rt: object = None

    def current(self):
        return self.rt.kernel.models

    def make(self, name, inode):
        return ModelDir(inode=inode, rt=self.rt, name=name)


def models_ctl(rt):
    """/ctl/models: `add NAME driver=D [context=N] [layers=..] [kv_heads=..] [head_dim=..] [dtype=..]
    [engine_wait_s=S] [resume_limit=N] [endpoints=URL@GPU,..] [OPTION=V..]`,
    `remove NAME`. Other keys are the driver's options (url=, engine_model=, ...), checked by building it."""
    return AddRemove(
        doing="model administration",
        usage="expected `add NAME driver=D [url=U | endpoints=URL@GPU,...] [context=N] [layers=N] [kv_heads=N] "
              "[head_dim=N] [dtype=T] [OPTION=VALUE...]` or `remove NAME`",
        add=lambda rest, **who: SetModel(model=new_model(rest), **who),
        remove=lambda name, **who: RemoveModel(name=name, **who)).command(rt)


def new_model(text: str) -> ModelConfig:
    """The model an `add` line describes; Invalid unless its driver accepts it as it is."""
    name, _, rest = text.strip().partition(" ")
    pairs = split_pairs(rest, known=None)
    if "driver" not in pairs:
        raise Invalid("driver= is required (e.g. driver=openai url=http://127.0.0.1:8080)")
    shape = {key: parse_int(pairs.pop(key), key) for key in SHAPE if key in pairs}
    outages = {key: _scalar(pairs.pop(key)) for key in OUTAGE if key in pairs}
    endpoints = endpoints_of_text(pairs.pop("endpoints")) if "endpoints" in pairs else ()
    model = ModelConfig(name=name, driver=pairs.pop("driver"), dtype=pairs.pop("dtype", "fp16"), **shape, **outages,
                        endpoints=endpoints, options={key: _scalar(value) for key, value in pairs.items()})
    drivers.load(model.driver)({name: model})  # the driver refuses options it does not take (Invalid)
    return model


def endpoints_of_text(text: str) -> list[dict]:
    """`URL@0,URL@1+2` -> [{url, gpus}]: endpoints joined by commas, each its URL, `@`, and its GPUs joined by `+`."""
    endpoints = []
    for item in text.split(","):
        url, at, gpus = item.strip().rpartition("@")
        if not at or not url:
            raise Invalid(f"endpoints= takes URL@GPU[+GPU...] joined by commas (endpoints=http://127.0.0.1:8080@0,"
                          f"http://127.0.0.1:8081@1), not {item.strip()!r}")
        endpoints.append({"url": url, "gpus": [parse_int(gpu, "an endpoint's GPU") for gpu in gpus.split("+")]})
    return endpoints


def _scalar(text: str):
    """An option's value as TOML would give it: an integer, a number (ASCII digits only), or text."""
    for kind in (int, float) if text.isascii() else ():
        try:
            return kind(text)
        except ValueError:
            pass
    return text
