"""GPU discovery through NVML (pynvml): real GPUs when an NVIDIA driver is present.

`discover()` never raises: with no driver, no library or no GPU it returns an empty
list and the reason in words, and the daemon falls back to simulated GPUs. Live
readings (utilization, temperature, power) come with the GPU issue.
"""
import warnings

import attrs


@attrs.frozen
class FoundGpu:
    """One GPU as NVML reports it."""

    index: int
    name: str
    memory_mib: int


def discover() -> tuple[list[FoundGpu], str]:
    """The NVIDIA GPUs on this machine, or [] and why there are none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
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
