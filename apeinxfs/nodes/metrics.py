"""/metrics: the kernel's counters and gauges in Prometheus text format 0.0.4, then the engines' own."""
from ..kernel.task import State


def _family(name: str, kind: str, help_text: str, samples) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


def show(rt, views=None) -> str:
    """The families; the view inodes' only if `views` (the tree's, views.py) is given."""
    kernel, counters = rt.kernel, rt.kernel.counters
    gpus = kernel.gpus
    families = [
        ("apeinx_tasks", "gauge", "Tasks by state.",
         [({"state": s.value[1]}, kernel.tasks.count(s)) for s in State]),
        ("apeinx_submits_total", "counter", "Tasks accepted.", [({}, counters.submitted)]),
        ("apeinx_rejected_writes_total", "counter", "Writes refused with an errno.",
         [({}, counters.rejected + rt.reject_lines.untold)]),  # also those whose reject line is not (yet) written
        ("apeinx_task_exits_total", "counter", "Tasks that ended, by how.",
         [({"how": how}, n) for how, n in sorted(counters.exits.items())]),
        ("apeinx_tasks_reaped_total", "counter", "Exited tasks forgotten by retention.", [({}, counters.reaped)]),
        ("apeinx_dispatches_total", "counter", "Tasks placed on a GPU.", [({}, counters.dispatched)]),
        ("apeinx_preemptions_total", "counter", "Running tasks sent back to the queue.", [({}, counters.preempted)]),
        ("apeinx_engine_steps_total", "counter", "Engine steps applied.", [({}, counters.steps)]),
        ("apeinx_tokens_generated_total", "counter", "Output tokens produced.", [({}, counters.tokens_out)]),
        ("apeinx_kv_pages", "gauge", "KV pages per GPU pool.",
         [({"gpu": g.config.index, "kind": k}, v) for g in gpus
          for k, v in (("total", g.pool.pages_total), ("used", g.pool.pages_used))]),
        ("apeinx_batch_size", "gauge", "Sequences in each GPU's batch.",
         [({"gpu": g.config.index}, len(g.running)) for g in gpus]),
        ("apeinx_kv_stall_seconds_total", "counter", "Time some runnable task waited for KV pages.",
         [({}, f"{kernel.moves.kv_some.snapshot(rt.clock.now_us()).total_us / 1e6:.6f}")]),
        ("apeinx_trace_events_total", "counter", "Lines written to the trace.", [({}, kernel.trace.seq)]),
        ("apeinx_blocked_readers", "gauge", "Readers blocked in stream or wait.", [({}, len(rt.readers))]),
        ("apeinx_mount_checks_total", "counter", "Looks in mountinfo for a lazy unmount of the daemon's mount.",
         [({}, rt.mount_watch.looks if rt.mount_watch is not None else 0)]),
        *_view_families(views),
        *_engine_families(rt.engine_metrics),
    ]
    return "".join(_family(*f) for f in families)


def _view_families(views) -> list:
    if views is None:
        return []
    return [("apeinx_view_inodes_used", "gauge", "Inodes of tenants' views of split files given and not given back.",
             [({}, views.in_use())]),
            ("apeinx_view_inodes_max", "gauge", "Inodes there are for tenants' views of split files.",
             [({}, views.limit - views.base)])]


def _engine_families(observations: dict) -> list:
    """What each model's engine said at its last scrape (models whose engine gave no number are left out)."""
    readings = {model: o.reading for model, o in sorted(observations.items()) if o.reading is not None}

    def samples(field, **labels):
        return [({"model": m, **labels}, getattr(r, field)) for m, r in readings.items()
                if getattr(r, field) is not None]
    return [("apeinx_engine_kv_usage_ratio", "gauge", "KV cache in use, as the engine reports it (0..1).",
             samples("kv_usage")),
            ("apeinx_engine_kv_tokens", "gauge", "Tokens in the engine's KV cache.", samples("kv_tokens")),
            ("apeinx_engine_requests", "gauge", "Requests the engine runs or queues.",
             samples("running", state="running") + samples("waiting", state="waiting"))]
