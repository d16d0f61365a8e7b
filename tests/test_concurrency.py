"""Tier 4: many shell writers on /ctl/submit at once, on a real mount.

Checks that concurrent submits are neither lost nor merged: each writer gets its own
pid and /tasks ends with exactly one entry per writer. Not single-writer semantics
(test_shell.py) nor throughput (that is a benchmark, not a test).
"""
import os
import subprocess

import pytest

pytestmark = pytest.mark.mount

WRITERS = 100


def run_together(scripts: list[str], timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Start every `sh -c SCRIPT` before waiting on any; results in order."""
    procs = [subprocess.Popen(["sh", "-c", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in scripts]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_concurrent_echo_writers_each_create_one_task(daemon):
    """100 `echo "jN 5 5" > ctl/submit` at once: all succeed and /tasks holds exactly their 100 names."""
    submit = daemon.path("ctl", "submit")
    results = run_together([f'echo "j{n} 5 5" > {submit}' for n in range(WRITERS)])
    assert [r.stderr for r in results if r.returncode != 0] == []
    pids = os.listdir(daemon.path("tasks"))
    assert len(pids) == WRITERS
    assert {daemon.status(int(pid))["Name"] for pid in pids} == {f"j{n}" for n in range(WRITERS)}


def test_concurrent_rw_writers_each_read_back_a_distinct_pid(daemon):
    """100 shells each open ctl/submit read-write, write a line and read back a pid: all distinct, all in /tasks."""
    submit = daemon.path("ctl", "submit")
    script = 'exec 3<> {path}; echo "w{n} 5 5" >&3; head -n 1 <&3'
    results = run_together([script.format(path=submit, n=n) for n in range(WRITERS)])
    assert [r.stderr for r in results if r.returncode != 0] == []
    pids = [int(r.stdout) for r in results]
    assert len(set(pids)) == WRITERS
    assert sorted(map(int, os.listdir(daemon.path("tasks")))) == sorted(pids)
    assert [daemon.status(pid)["Name"] for pid in pids] == [f"w{n}" for n in range(WRITERS)]
