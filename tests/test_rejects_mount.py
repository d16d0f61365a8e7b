"""Tier 4: through a real mount and sh, every writable file's refused write fails the shell's write and leaves
exactly one `reject` line naming the file in `trace/events`; a tenant's settings file written after the tenant
was removed too; a shell loop of refused writes leaves only its uid's burst of lines (`[limits] reject_lines`),
each write failing all the same. The same on the node tree alone is test_rejects.py and test_reject_rate.py."""
import csv
import io
import subprocess

import pytest

from daemon import FAST_CONFIG, Daemon, poll_until

pytestmark = pytest.mark.mount

REFUSED = [("ctl/submit", "BAD"), ("ctl/kill", "99"), ("ctl/tenants", "add default"), ("ctl/models", "BAD"),
           ("ctl/policy", "BAD"), ("sched/policy", "BAD"), ("tenants/default/weight", "0"),
           ("tenants/default/members", "BAD"), ("tenants/default/quota", "BAD"), ("tenants/default/budget", "BAD"),
           ("tenants/default/sandbox", "BAD")]


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)


def text(path: str) -> str:
    with open(path) as file:
        return file.read()


def rejects(daemon) -> list[str]:
    """The details of the reject lines in the mount's trace/events."""
    with open(daemon.path("trace", "events")) as events:
        return [row["detail"] for row in csv.DictReader(io.StringIO(events.read())) if row["type"] == "reject"]


def test_every_writable_files_refused_echo_leaves_one_reject_line(daemon):
    """`echo BAD > FILE` fails for each writable file, and trace/events then holds one reject line per file,
    naming it and uid 0, in the order written."""
    for path, line in REFUSED:
        assert sh(f"echo '{line}' > {daemon.path(*path.split('/'))}").returncode != 0, path
    found = rejects(daemon)
    assert [detail.split(":")[0] for detail in found] == [f"/{path}" for path, _ in REFUSED]
    assert all(detail.endswith(" (uid 0)") for detail in found)


def test_a_settings_file_written_after_its_tenant_is_removed_leaves_a_reject_line(daemon):
    """A shell holds t1's weight open while t1 is removed: its write then fails, and trace/events has one
    reject line for /tenants/t1/weight saying there is no tenant t1."""
    ctl, weight = daemon.path("ctl", "tenants"), daemon.path("tenants", "t1", "weight")
    done = sh(f"echo 'add t1' > {ctl} && exec 3> {weight} && echo 'remove t1' > {ctl} && echo 300 >&3")
    assert done.returncode != 0
    assert rejects(daemon) == ["/tenants/t1/weight: no tenant 't1' (uid 0)"]


def test_a_refused_truncating_write_to_the_policy_keeps_its_rules(daemon):
    """`echo 'deny uidd=5' > ctl/policy` fails and leaves the rule a first `>` wrote: the refused write changes
    nothing, also at its close."""
    policy = daemon.path("ctl", "policy")
    assert sh(f"echo 'deny uid=65534' > {policy}").returncode == 0
    assert sh(f"echo 'deny uidd=5' > {policy}").returncode != 0
    assert sh(f"cat {policy}").stdout == "deny uid=65534\n"


def test_a_shell_loop_of_refused_writes_leaves_one_burst_of_reject_lines(tmp_path):
    """500 `echo 99 > ctl/kill` in a loop all fail, and /metrics counts them, but trace/events holds only the
    default 20 reject lines: the trace does not grow with the loop (a window of an hour: none ends meanwhile)."""
    config = FAST_CONFIG + "\n[limits]\nreject_window_s = 3600\n"
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config) as daemon:
        kill, metrics = daemon.path("ctl", "kill"), daemon.path("metrics")
        loop = sh(f"n=0; i=0; while [ $i -lt 500 ]; do echo 99 > {kill} 2>/dev/null || n=$((n+1)); i=$((i+1)); "
                  "done; echo $n")
        assert loop.stdout == "500\n"
        assert rejects(daemon) == ["/ctl/kill: no task 99 (uid 0)"] * 20
        poll_until(lambda: "apeinx_rejected_writes_total 500\n" in text(metrics), 10, "/metrics to count 500 refusals")
