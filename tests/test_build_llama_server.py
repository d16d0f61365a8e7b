"""scripts/build-llama-server's decisions, without compiling: CUDA or not, the fallback, the progress.

`--print-cmake-args` shows the configure arguments a build would use; PATH is cut down to
/usr/bin:/bin plus a folder of stand-ins (an `nvcc` that does nothing, a `cmake` that prints
make's `[ NN%]` lines and makes the files a build makes, failing for CUDA when asked), and
APEINXFS_CACHE is the test's own, so nothing of the machine's toolkit or cache is used.
The real build is tests/engines.py's, once per machine.
"""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-llama-server"
VERSION = "0.3.36"
FAKE_CMAKE = """#!/bin/sh
case " $* " in *" --build "*) ;; *) exit 0 ;; esac
build=$2
case $(cat "$(dirname "$build")/flavour" 2>/dev/null) in cuda) echo "fatal: no cuBLAS"; exit 3 ;; esac
for percent in 5 5 40 40 100; do echo "[ $percent%] Building CXX object x.o"; done
mkdir -p "$build/bin" && touch "$build/bin/libllama.so" && printf '#!/bin/sh\\n' > "$build/bin/llama-server"
chmod +x "$build/bin/llama-server"
"""


def tool(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)
    (folder / name).chmod(0o755)


def run(tmp_path: Path, *args: str, nvcc: bool = False, **env: str) -> subprocess.CompletedProcess:
    """The script with PATH /usr/bin:/bin (plus a stand-in nvcc when `nvcc`) and the test's cache."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    path = "/usr/bin:/bin"
    if nvcc:
        tool(tools, "nvcc", "#!/bin/sh\n")
        path = f"{tools}:{path}"
    environment = {"HOME": str(tmp_path), "PATH": path, "APEINXFS_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=60)


def cmake_args(tmp_path: Path, **kwargs) -> list[str]:
    done = run(tmp_path, "--print-cmake-args", **kwargs)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_without_nvcc_the_build_is_for_the_cpu(tmp_path):
    """No nvcc on PATH and no CUDA_HOME: GGML_CUDA=OFF, built under VERSION/."""
    args = cmake_args(tmp_path)
    assert "-DGGML_CUDA=OFF" in args and args[args.index("-B") + 1] == f"{tmp_path}/cache/llama.cpp/{VERSION}/build"


def test_nvcc_on_path_builds_with_cuda_apart_from_the_cpu_build(tmp_path):
    """nvcc on PATH: GGML_CUDA=ON with that compiler, in VERSION-cuda/, from the shared source."""
    args = cmake_args(tmp_path, nvcc=True, CUDA_ARCHITECTURES="90")
    assert {"-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={tmp_path}/tools/nvcc", "-DCMAKE_CUDA_ARCHITECTURES=90"} <= set(args)
    assert args[args.index("-B") + 1].endswith(f"/{VERSION}-cuda/build")
    assert args[args.index("-S") + 1] == f"{tmp_path}/cache/llama.cpp/{VERSION}/src/vendor/llama.cpp"


def test_cuda_home_finds_nvcc_and_llama_cuda_forces_either_way(tmp_path):
    """CUDA_HOME/bin/nvcc counts as present; LLAMA_CUDA=0 forbids CUDA, LLAMA_CUDA=1 asks for it without one."""
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    tool(tmp_path / "cuda" / "bin", "nvcc", "#!/bin/sh\n")
    assert f"-DCMAKE_CUDA_COMPILER={tmp_path}/cuda/bin/nvcc" in cmake_args(tmp_path, CUDA_HOME=str(tmp_path / "cuda"))
    assert "-DGGML_CUDA=OFF" in cmake_args(tmp_path, nvcc=True, LLAMA_CUDA="0")
    assert "-DGGML_CUDA=ON" in cmake_args(tmp_path, LLAMA_CUDA="1")
    wrong = run(tmp_path, "--print-cmake-args", LLAMA_CUDA="maybe")
    assert wrong.returncode == 2 and "LLAMA_CUDA must be 1, 0 or auto, not 'maybe'" in wrong.stderr


@pytest.fixture
def unpacked(tmp_path) -> Path:
    """A cache whose source is already unpacked (nothing to download) and a stand-in cmake on PATH."""
    base = tmp_path / "cache" / "llama.cpp" / VERSION
    (base / "src").mkdir(parents=True)
    (base / "src" / ".unpacked").touch()
    (tmp_path / "tools").mkdir()
    tool(tmp_path / "tools", "cmake", FAKE_CMAKE)
    for name in ("g++", "make"):
        tool(tmp_path / "tools", name, "#!/bin/sh\n")
    return base


def test_a_failed_cuda_build_falls_back_to_the_cpu_and_is_not_retried(tmp_path, unpacked):
    """Auto-detected CUDA that fails: the log's tail and the reason are shown, the CPU build is made and
    printed, and the next run goes straight to it; LLAMA_CUDA=1 would try again."""
    (unpacked.parent / f"{VERSION}-cuda").mkdir()
    (unpacked.parent / f"{VERSION}-cuda" / "flavour").write_text("cuda")
    env = {"PATH": f"{tmp_path}/tools:/usr/bin:/bin"}
    first = run(tmp_path, nvcc=True, **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == f"{unpacked}/bin/llama-server"
    assert "fatal: no cuBLAS" in first.stderr and "the CUDA build failed" in first.stderr
    assert (unpacked.parent / f"{VERSION}-cuda" / "failed").exists()
    assert "-DGGML_CUDA=OFF" in cmake_args(tmp_path, nvcc=True, **env)
    assert "-DGGML_CUDA=ON" in cmake_args(tmp_path, nvcc=True, LLAMA_CUDA="1", **env)


def test_the_build_shows_each_stage_and_each_new_percentage_with_elapsed_seconds(tmp_path, unpacked):
    """stderr has the configure and compile stages and each `[ NN%]` once, all prefixed `[N s]`; a
    second run is silent and prints the same path."""
    env = {"PATH": f"{tmp_path}/tools:/usr/bin:/bin"}
    first = run(tmp_path, **env)
    lines = first.stderr.splitlines()
    assert first.returncode == 0 and all(line.startswith("build-llama-server: [") for line in lines), first.stderr
    said = [line.split(" s] ", 1)[1] for line in lines]
    assert said[:2] == ["configuring with cmake (CUDA off)", "compiling llama-server with 2 jobs"]
    assert [line.split("]")[0] for line in said if line.startswith("[ ")] == ["[ 5%", "[ 40%", "[ 100%"]
    again = run(tmp_path, **env)
    assert again.stderr == "" and again.stdout == first.stdout.splitlines()[-1] + "\n"
