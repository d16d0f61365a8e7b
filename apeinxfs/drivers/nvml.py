"""GPUs through NVML (pynvml): discovery at start, live readings for /gpus/N/.

`discover()` never raises: with no driver, no library or no GPU it returns an empty
list and the reason in words, and the daemon falls back to simulated GPUs. `Readings`
keeps NVML open while the daemon runs and reads one GPU's memory, utilization,
temperature and power when a /gpus file is read; a reading NVML refuses (a GPU that
has no power sensor, say) is None, shown as `-`. Simulated GPUs get no Readings: their
files are rendered from the kernel's books instead (nodes/gpus.py).
"""
import warnings

import attrs


@attrs.frozen
class FoundGpu:
    """One GPU as NVML reports it."""

    index: int
    name: str
    memory_mib: int


@attrs.frozen
class Reading:
    """One GPU now: memory in MiB, utilization in percent, temperature in C, power in W."""

    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None


def _import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml
    return pynvml


def discover() -> tuple[list[FoundGpu], str]:
    """The NVIDIA GPUs on this machine, or [] and why there are none."""
    try:
        pynvml = _import()
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
        return [], f"NVML unavailable: {exc or type(exc).__name__}"
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [_describe(pynvml, i) for i in range(count)], f"{count} GPU(s)"
    except Exception as exc:
        return [], f"NVML error: {exc}"
    finally:
        pynvml.nvmlShutdown()


def _describe(pynvml, index: int) -> FoundGpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1 << 20)
    return FoundGpu(index=index, name=name.decode() if isinstance(name, bytes) else name, memory_mib=memory)


class Readings:
    """Live readings of the real GPUs, NVML kept initialised from open() to close()."""

    def __init__(self, pynvml=None):
        self.pynvml = pynvml or _import()
        self.pynvml.nvmlInit()

    def read(self, index: int) -> Reading:
        nv = self.pynvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        memory = nv.nvmlDeviceGetMemoryInfo(handle)
        utilization = _or_none(lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        temperature = _or_none(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        milliwatts = _or_none(lambda: nv.nvmlDeviceGetPowerUsage(handle))
        return Reading(memory.total >> 20, memory.used >> 20, utilization, temperature,
                       None if milliwatts is None else milliwatts / 1000)

    def close(self) -> None:
        self.pynvml.nvmlShutdown()


def open_readings(gpus) -> Readings | None:
    """Readings for the daemon's lifetime if any of `gpus` (GpuConfig) is real, else None."""
    if all(g.simulated for g in gpus):
        return None
    try:
        return Readings()
    except Exception:  # the driver went away since discovery: files show the kernel's books
        return None


def _or_none(read):
    try:
        return read()
    except Exception:  # NVMLError_NotSupported and kin: this GPU cannot say
        return None
