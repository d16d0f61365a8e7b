"""Real inference engines for tests: llama.cpp's llama-server on the tiny model.

`llama_server_binary` builds llama-server once per machine with scripts/build-llama-server
(cached under ~/.cache/apeinxfs, minutes the first time, instant after) and skips, with the
build's own words, where it cannot be built. `LlamaServer` runs one on 127.0.0.1 with
metrics and parallel slots, and stops it by pid. Test modules import the fixtures they use.
Nothing here fakes an engine: for the protocol alone, see the driver's own tests.
"""
import collections
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import tinymodel
from daemon import TINY_SHAPE, engine_config

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "scripts" / "build-llama-server"


def openai_daemon_config(url: str, model: dict | None = None, **options) -> str:
    """A daemon TOML: one simulated GPU of 4 slots running the tiny model on the engine at `url`
    (`model`: more keys of its model table)."""
    return engine_config("openai", shape={**TINY_SHAPE, **(model or {})}, url=url, **options)


def build_llama_server(pytestconfig=None) -> Path:
    """The llama-server binary, built now if this machine has none yet; skips if it cannot be.

    The build's progress (stderr) goes to the terminal as it comes, past pytest's capture
    when `pytestconfig` is given (as capsys.disabled() does): a first build takes minutes."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager") if pytestconfig else None
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        build = subprocess.Popen([BUILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHON": sys.executable})
        said = collections.deque(maxlen=60)
        for line in build.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            said.append(line)
        path, status = build.stdout.read(), build.wait()
    if status != 0:
        pytest.skip(f"cannot build llama-server here: {''.join(said).strip()[-2000:]}")
    return Path(path.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One llama-server process serving `model` with `slots` parallel slots."""

    def __init__(self, binary: Path, model: Path, log: Path, slots: int = 4, slot_context: int = 4096,
                 port: int | None = None, cpus: set[int] | None = None):
        self.binary, self.model, self.log, self.slots, self.cpus = binary, model, log, slots, cpus
        self.context = slots * slot_context
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def command(self) -> list[str]:
        """One thread: on a busy 2-core machine ggml's spinning threads run 5-50x slower with two. With
        `cpus`, all its threads run on those CPUs only (taskset)."""
        pinned = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        return pinned + [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                         "-np", str(self.slots), "-c", str(self.context), "--metrics", "--slots", "--no-webui",
                         "-t", "1", "-tb", "1", "--cache-ram", "0", "--no-warmup"]

    def start(self, timeout: float = 60.0) -> "LlamaServer":
        """Start it and wait until GET /health says ok."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama-server did not come up; its log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """Terminate by pid, then kill if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def crash(self) -> None:
        """kill -9, as an engine dies: llama-server ignores SIGTERM while it streams."""
        self.process.kill()
        self.process.wait()

    def get(self, path: str):
        """GET `path` on the server; the httpx response."""
        return httpx.get(f"{self.url}{path}", timeout=10)

    def busy_slots(self) -> int:
        """How many slots are processing a request now (GET /slots)."""
        return sum(1 for slot in self.get("/slots").json() if slot.get("is_processing"))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="session")
def llama_server_binary(pytestconfig) -> Path:
    """llama-server, built once per machine (minutes when the cache is cold, with its progress shown)."""
    return build_llama_server(pytestconfig)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny seeded GGUF model, written once per test session."""
    return tinymodel.write(tmp_path_factory.mktemp("model") / "tiny.gguf", seed=0)


@pytest.fixture
def llama_server(llama_server_binary, tiny_model, tmp_path):
    """A running llama-server with 4 slots of 4096 tokens on the tiny model, stopped afterwards."""
    with LlamaServer(llama_server_binary, tiny_model, tmp_path / "llama-server.log") as server:
        yield server
