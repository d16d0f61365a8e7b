"""/gpus/N/: each GPU's name, source, memory, utilization, temperature and power.

Real GPUs (found through NVML) are read live at each read (drivers/nvml.Readings).
Simulated GPUs are rendered from the kernel's books: memory used is the KV pages in use
(the engine model holds nothing else), utilization the share of batch slots busy, and
temperature and power `-` (unknown), so scripts read the same files either way and
`source` says which they got.
"""


def _value(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def reading(kernel, readings, gpu: int) -> dict:
    """The GPU's numbers now, from NVML or the kernel's books."""
    config, pool = kernel.gpus[gpu].config, kernel.kv.pools[gpu]
    if readings is not None and not config.simulated:
        now = readings.read(gpu)
        return {"memory_total_mib": now.memory_total_mib, "memory_used_mib": now.memory_used_mib,
                "utilization_pct": now.utilization_pct, "temperature_c": now.temperature_c, "power_w": now.power_w}
    used_mib = (pool.pages_total - pool.pages_free) * kernel.config.page_mib
    busy = 100 * len(kernel.gpus[gpu].running) // config.slots
    return {"memory_total_mib": config.memory_mib, "memory_used_mib": used_mib, "utilization_pct": busy,
            "temperature_c": None, "power_w": None}


def _memory(now: dict) -> str:
    return f"total_mib {now['memory_total_mib']}\nused_mib {now['memory_used_mib']}\n"


def files(rt, gpu: int) -> dict:
    """Renderers of /gpus/N/*, by file name; each read takes one reading (rt.readings: NVML or None)."""
    config = rt.kernel.gpus[gpu].config

    def show(render):
        return lambda: render(reading(rt.kernel, rt.readings, gpu))
    return {
        "name": lambda: f"{config.name}\n",
        "source": lambda: "simulated\n" if config.simulated or rt.readings is None else "nvml\n",
        "memory": show(_memory),
        "utilization": show(lambda now: f"{_value(now['utilization_pct'])}\n"),
        "temperature": show(lambda now: f"{_value(now['temperature_c'])}\n"),
        "power": show(lambda now: f"{_value(now['power_w'])}\n"),
    }
