"""/models/NAME/{status,config}: each model's live use and its configuration."""


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
