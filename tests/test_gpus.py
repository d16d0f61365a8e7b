"""Tiers 1-2: GPUs through NVML with no NVIDIA driver (this machine), a fake NVML, and /gpus/N/.

A real GPU is checked by scripts/gpu-check on a machine that has one.
"""
import errno
import os
import subprocess
import types

import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs.drivers import nvml
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import GpuMemory, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import State
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime, submit
from test_nodes import text
from test_retention import load_refusal


class NotSupported(Exception):
    """What NVML raises for a reading a GPU cannot give."""


def fake_pynvml(power_mw=None, used=lambda: 3 << 30):
    """A stand-in pynvml with one 80 GiB GPU at 40% and 61 C; power as given (None: unsupported),
    bytes used as `used()` says at each reading."""
    def power(_handle):
        if power_mw is None:
            raise NotSupported("power")
        return power_mw
    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda _h: types.SimpleNamespace(total=80 << 30, used=used()),
        nvmlDeviceGetUtilizationRates=lambda _h: types.SimpleNamespace(gpu=40),
        nvmlDeviceGetTemperature=lambda _h, _sensor: 61, nvmlDeviceGetPowerUsage=power)


def test_discover_without_an_nvidia_driver_says_why():
    """On a machine without an NVIDIA driver, discovery finds nothing and says NVML is unavailable."""
    found, why = nvml.discover()
    if found:
        pytest.skip(f"this machine has an NVIDIA GPU ({why}): scripts/gpu-check covers it")
    assert found == [] and why.startswith("NVML unavailable")


def test_discovered_gpus_are_named_in_the_mount_line(tmp_path, monkeypatch):
    """With NVML, the config's GPU source (the daemon's log line at mount) says which GPUs it found."""
    found = [nvml.FoundGpu(0, "NVIDIA H100 80GB HBM3", 81559), nvml.FoundGpu(1, "NVIDIA H100 80GB HBM3", 81559)]
    monkeypatch.setattr(nvml, "discover", lambda: (found, "2 GPU(s)"))
    config = config_mod.load(None, str(tmp_path), use_nvml=True)
    assert config.gpu_source == ("2 NVIDIA GPU(s) found through NVML: 0 NVIDIA H100 80GB HBM3 (81559 MiB), "
                                 "1 NVIDIA H100 80GB HBM3 (81559 MiB)")
    assert [gpu.name for gpu in config.kernel.gpus] == ["NVIDIA H100 80GB HBM3"] * 2


def test_readings_convert_units_and_mark_what_nvml_cannot_read():
    """Memory in MiB, power in watts, and an unsupported sensor as None."""
    assert nvml.Readings(fake_pynvml(power_mw=215_500)).read(0) == nvml.Reading(81920, 3072, 40, 61, 215.5)
    assert nvml.Readings(fake_pynvml()).read(0).power_w is None


def test_simulated_gpus_need_no_readings():
    """With only simulated GPUs no NVML session is opened."""
    from apeinxfs.kernel.config import GpuConfig
    assert nvml.open_readings([GpuConfig(index=0)]) is None


def test_simulated_gpu_files_come_from_the_kernels_books(tmp_path):
    """A simulated GPU's files: memory used is its KV pages in use, utilization its busy slots, the rest '-'."""
    with open_runtime(tmp_path) as runtime:
        tree = Tree(runtime)
        submit(runtime)
        gpu = runtime.kernel.tasks[1].gpu
        pool, config = runtime.kernel.kv.pools[gpu], runtime.kernel.gpus[gpu].config
        used = (pool.pages_total - pool.pages_free) * runtime.kernel.config.page_mib
        assert text(tree, f"/gpus/{gpu}/memory") == f"total_mib {config.memory_mib}\nused_mib {used}\n"
        assert text(tree, f"/gpus/{gpu}/utilization") == f"{100 // config.slots}\n"
        assert (text(tree, f"/gpus/{gpu}/source"), text(tree, f"/gpus/{gpu}/power")) == ("simulated\n", "-\n")


def mark_real(runtime) -> None:
    """Make the runtime's GPU 0 a real one, as NVML discovery would."""
    runtime.kernel.gpus[0].config = GpuConfig(index=0, name="H100", simulated=False)


def test_real_gpu_files_show_nvml_readings(tmp_path):
    """A GPU marked real reads NVML at each read."""
    with open_runtime(tmp_path) as runtime:
        mark_real(runtime)
        runtime.readings = nvml.Readings(fake_pynvml(power_mw=300_000))
        tree = Tree(runtime)
        assert [text(tree, f"/gpus/0/{name}") for name in ("name", "source", "temperature", "power")] == [
            "H100\n", "nvml\n", "61\n", "300\n"]


def real_gpu_kernel() -> Kernel:
    """A kernel on one real 64 MiB-KV GPU with 1 MiB pages (8 tokens of the default model each)."""
    return Kernel(KernelConfig(models=[ModelConfig(name="sim")], page_mib=1,
                               gpus=[GpuConfig(index=0, kv_mib=64, slots=4, simulated=False)]))


def test_real_free_memory_caps_placement_and_counts_as_kv_pressure():
    """A task waits, stalled for KV, while NVML reads less than a page free, and runs once 16 MiB are."""
    kernel = real_gpu_kernel()
    kernel.apply(GpuMemory(gpu=0, free_mib=0), 0)
    pid = kernel.apply(Submit(spec=TaskSpec(name="t", max_tokens=16)), 1)
    assert kernel.tasks[pid].state == State.QUEUED and kernel.moves.kv_some.stalled
    kernel.apply(GpuMemory(gpu=0, free_mib=16), 2)
    assert kernel.tasks[pid].state == State.RUNNING and not kernel.moves.kv_some.stalled
    assert b"gpu-memory" in kernel.trace.buffer and b"16 MiB free: new tasks may take 16 pages" in kernel.trace.buffer


@pytest.mark.parametrize("lines, reason", [
    ("simulated = 100000000", "gpus.simulated must be an integer from 0 to 1024, not 100000000"),
    ("simulated = true", "gpus.simulated must be an integer from 0 to 1024, not True"),
    ("slots = 100000000000", "slots must be at most 4096, not 100000000000"),
    ("slots = 1e20", "slots must be a positive integer, not 1e+20"),
])
def test_too_many_simulated_gpus_or_slots_are_refused_at_load(tmp_path, lines, reason):
    """A [gpus] count beyond its bound (a typo that would build a hundred million GPUs) is refused with the bound."""
    assert reason in load_refusal(tmp_path, f"[gpus]\n{lines}\n")


def test_gpu_memory_of_a_simulated_gpu_is_refused():
    """Only a real GPU's memory can be read: a GpuMemory event for a simulated one is EINVAL."""
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0)]))
    with pytest.raises(ApeinxError) as caught:
        kernel.check(GpuMemory(gpu=0, free_mib=100))
    assert caught.value.errno == errno.EINVAL


async def test_runtime_journals_real_free_memory_when_it_moves(tmp_path, autojump_clock):
    """The daemon reads NVML every 2 s, journals free memory only when it moves by a step, and gpu0/pool shows it."""
    used = [3 << 30]
    with open_runtime(tmp_path) as runtime:
        mark_real(runtime)
        runtime.readings = nvml.Readings(fake_pynvml(used=lambda: used[0]))
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            await trio.sleep(1)
            used[0] += 1 << 20  # jitter of 1 MiB: not journaled
            await trio.sleep(4)
            used[0] += 40 << 30
            await trio.sleep(4)
            nursery.cancel_scope.cancel()
        events = [e for _, _, e in runtime.journal.replay() if isinstance(e, GpuMemory)]
        pool = dict(line.split() for line in text(Tree(runtime), "/memory/gpu0/pool").splitlines())
    assert [e.free_mib for e in events] == [77 << 10, (37 << 10) - 1]
    assert pool["pages_real_free"] == str(((37 << 10) - 1) // runtime.kernel.config.page_mib)


@pytest.mark.mount
def test_gpu_check_mounts_prints_the_gpu_and_runs_a_task():
    """scripts/gpu-check prints /gpus/0/* (simulated here), runs one task to done and unmounts."""
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "gpu-check")
    result = subprocess.run(["/bin/sh", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "source:      simulated " in lines and "--- task 1: done" in lines
    mountpoint = next(line.split()[-1] for line in lines if line.startswith("mounted at "))
    assert not any(line.split()[1] == mountpoint for line in open("/proc/mounts"))
