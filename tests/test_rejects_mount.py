"""Tier 4: through a real mount and sh, every writable file's refused write fails the shell's write and leaves
exactly one `reject` line naming the file in `trace/events`; a tenant's settings file written after the tenant
was removed too. The same on the node tree alone is test_rejects.py."""
import csv
import io
import subprocess

import pytest

pytestmark = pytest.mark.mount

REFUSED = [("ctl/submit", "BAD"), ("ctl/kill", "99"), ("ctl/tenants", "add default"), ("ctl/models", "BAD"),
           ("ctl/policy", "BAD"), ("sched/policy", "BAD"), ("tenants/default/weight", "0"),
           ("tenants/default/members", "BAD"), ("tenants/default/quota", "BAD"), ("tenants/default/budget", "BAD"),
           ("tenants/default/sandbox", "BAD")]


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


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
