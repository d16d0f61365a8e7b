"""Tier 4: the mounted tree in front of REAL llama.cpp in the daemon's process, via the llamacpp driver.

The daemon loads the tiny model with llama-cpp-python on the shared libraries that
scripts/build-llama-server builds (tests/engines.py, once per machine). What we compare
against is llama-cpp-python itself, run here in the test process on the same model with
the same seed: the daemon must stream the same text and count the same tokens. Skips
where llama-cpp-python is not installed (the `llamacpp` extra).
"""
import os
import time

import pytest

from apeinxfs.drivers import llamacpp
from apeinxfs.kernel.errors import Invalid
from daemon import TINY_SHAPE, Daemon, engine_config, poll_until
from engines import llama_server_binary, tiny_model  # noqa: F401 (fixtures)
from test_engine_daemon import read_all, wait_line

pytestmark = [pytest.mark.mount, pytest.mark.engine, pytest.mark.slow]

SEED = 7
CONTEXT = 16384  # past the model's trained 4096, so a long generation lasts long enough to be killed


def config_for(model_path) -> str:
    return engine_config("llamacpp", context=CONTEXT, shape=TINY_SHAPE, model_path=str(model_path), n_threads=1,
                         seed=SEED)


@pytest.fixture(scope="module")
def llama_cpp(llama_server_binary):  # noqa: F811 (a fixture): it builds the shared libraries too
    """llama-cpp-python on the built libraries, or a skip when the extra is not installed."""
    try:
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(llamacpp.library_dir()))
    except llamacpp.metadata.PackageNotFoundError:
        pytest.skip("llama-cpp-python is not installed: pip install 'apeinxfs[llamacpp]'")
    return pytest.importorskip("llama_cpp")


@pytest.fixture
def mounted(llama_cpp, tiny_model, tmp_path):  # noqa: F811 (fixtures)
    """A daemon whose only model runs in its own process on the tiny model."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config_for(tiny_model)) as daemon:
        yield daemon


def direct_generation(llama_cpp, model_path, prompt: str, tokens: int) -> str:
    """The text llama-cpp-python generates here for `prompt`: the first `tokens` tokens, as UTF-8."""
    llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=CONTEXT, n_threads=1, seed=SEED, verbose=False)
    ids = []
    for token in llama.generate(llama.tokenize(prompt.encode())):
        ids.append(token)
        if len(ids) == tokens:
            break
    return llama.detokenize(ids).decode(errors="replace")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_stream_prints_llama_cpps_tokens_and_wait_says_done(mounted, llama_cpp, tiny_model):  # noqa: F811
    """`cat stream` yields the text in several reads; it is llama.cpp's own text for the prompt, TokensOut its count."""
    prompt = "the kernel reads a file"
    pid = mounted.submit(f'name=story model=tiny max_tokens=2000 prompt="{prompt}"')
    reads = read_all(mounted.path("tasks", str(pid), "stream"))
    assert wait_line(mounted, pid) == "done"
    assert mounted.status(pid)["TokensOut"] == "2000"
    assert len(reads) > 1 and b"".join(reads).decode() == direct_generation(llama_cpp, tiny_model, prompt, 2000)


def test_n_gpu_layers_is_what_this_build_can_do(llama_cpp, tiny_model):  # noqa: F811
    """With the real libraries: n_gpu_layers is refused with the reason by a build without GPU offload, and a
    model with it loads by one with (scripts/gpu-check runs a task on it)."""
    model = type("Model", (), {"name": "tiny", "context": 256,
                               "options": {"model_path": str(tiny_model), "n_gpu_layers": 99}})
    if not llama_cpp.llama_supports_gpu_offload():
        with pytest.raises(Invalid, match="n_gpu_layers 99 needs llama.cpp built with GPU support"):
            llamacpp.Options.of(model)
    else:
        assert llamacpp.open_llama(llamacpp.Options.of(model)).n_ctx() == 256


def test_sampling_keys_reach_llama_cpp(mounted):
    """temperature 0 and seed 7 twice give the same text; seeds 7 and 8 at temperature 1.5 differ; stop=e ends
    the text before its first e, done short of max_tokens."""
    def run(line: str) -> tuple[int, str, bytes]:
        pid = mounted.submit(line)
        exit_line = wait_line(mounted, pid)
        with open(mounted.path("tasks", str(pid), "output"), "rb") as output:
            return pid, exit_line, output.read()
    same = 'name=d model=tiny max_tokens=64 prompt="the kernel" temperature=0 seed=7'
    first, second = run(same), run(same)
    assert first[1:] == second[1:] and first[2]
    hot = 'name=h model=tiny max_tokens=48 prompt="a small model" temperature=1.5 seed=%d'
    texts = [run(hot % seed)[2] for seed in (7, 7, 8)]
    assert texts[0] == texts[1] != texts[2]
    pid, exit_line, text = run('name=s model=tiny max_tokens=400 prompt="the kernel" temperature=0 stop=e')
    assert exit_line == "done" and text and b"e" not in text and int(mounted.status(pid)["TokensOut"]) < 400


def test_concurrent_tasks_all_complete(mounted):
    """Four tasks submitted at once, on four slots, all end done with their tokens (the model takes them in turn)."""
    pids = [mounted.submit(f'name=t{n} model=tiny max_tokens=500 prompt="task {n}"') for n in range(4)]
    assert [wait_line(mounted, pid) for pid in pids] == ["done"] * 4
    assert [mounted.status(pid)["TokensOut"] for pid in pids] == ["500"] * 4


def test_kill_mid_stream_stops_the_generation(mounted):
    """Killed while generating, the task stops: no tokens after, the daemon burns no more CPU, the next task runs."""
    pid = mounted.submit('name=long model=tiny max_tokens=16000 prompt="go on"')
    poll_until(lambda: int(mounted.status(pid)["TokensOut"]) > 0, 20, "tokens flowing")
    with open(mounted.path("tasks", str(pid), "ctl"), "w") as ctl:
        ctl.write("kill\n")
    assert wait_line(mounted, pid) == "killed"
    killed_at, before = mounted.status(pid)["TokensOut"], cpu_seconds(mounted.proc.pid)
    time.sleep(1.0)
    assert cpu_seconds(mounted.proc.pid) - before < 0.25  # a generation left running would spend most of a core
    assert mounted.status(pid)["TokensOut"] == killed_at and int(killed_at) < 16000
    after = mounted.submit('name=after model=tiny max_tokens=20 prompt="next"')
    assert wait_line(mounted, after) == "done"
