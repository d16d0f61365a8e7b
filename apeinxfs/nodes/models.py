"""/models/NAME/{status,config,engine}: each model's live use, its configuration, its engine's own metrics.

`engine` shows the last scrape of the model's engine (drivers/scrape.py, kept on the
Runtime, not in the kernel): flat keyed, `-` where the engine does not say, and
`source none` for a model whose driver reads no engine metrics (sim).
"""


def status(kernel, name: str) -> str:
    running = sum(1 for g in kernel.gpus for t in g.running.values() if t.model == name)
    queued = sum(1 for t in kernel.runq.tasks() if t.model == name)
    model = kernel.models[name]
    rows = [("Name", name), ("Driver", model.driver), ("State", "ready"), ("Running", running),
            ("Queued", queued), ("Gpus", ",".join(str(g.config.index) for g in kernel.gpus))]
    return "".join(f"{k}:\t{v}\n" for k, v in rows)


def config(kernel, name: str) -> str:
    model = kernel.models[name]
    page = kernel.config.page_bytes
    rows = [("driver", model.driver), ("context", model.context), ("layers", model.layers),
            ("kv_heads", model.kv_heads), ("head_dim", model.head_dim), ("dtype", model.dtype),
            ("kv_bytes_per_token", model.token_bytes), ("tokens_per_page", page // model.token_bytes)]
    rows += sorted(model.options.items())
    return "".join(f"{k} {v}\n" for k, v in rows)


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
