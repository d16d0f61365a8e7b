"""Tier 1-2: each uid's `reject` trace lines are rate-limited (`[limits] reject_lines` per `reject_window_s`,
Runtime.reject): a burst, then only counted, the count summed up in one line when the uid's next window
opens; the writes are refused all the same; one uid's flood leaves another's lines alone; the lines are
journaled, so a replay (and `replay --verify`) writes the same ones. Fake clock, no FUSE: the same through a
real mount with a shell loop is test_rejects_mount.py."""
import csv
import errno
import io
import json
import re

import attrs
import pytest

from apeinxfs import config as config_mod
from apeinxfs import verify
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.errors import Denied, Invalid
from apeinxfs.kernel.events import Rejected, to_row
from apeinxfs.nodes import metrics
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from apeinxfs.ratelog import KEYS_MAX, Windows
from apeinxfs.runtime import REJECT_OVERALL
from test_cluster_publish import StillClock
from test_storage_faults import FailingDb, full_error
from test_journal_runtime import ONE_GPU, open_runtime
from test_kernel import kernel_config, trace_rows
from test_nodes import refusal, resolve
from test_rejects import rejects

LIMITED = ONE_GPU + "[limits]\nreject_lines = 3\nreject_window_s = 10\n"
NOISY, QUIET = Caller(uid=1000, pid=11, role="user"), Caller(uid=1001, pid=12, role="user")


@pytest.fixture
def limited(tmp_path):
    """A Tree over a runtime of 3 reject lines per uid per 10 s, on a clock that moves only when told."""
    with open_runtime(tmp_path, LIMITED) as runtime:
        runtime.clock = StillClock()
        yield Tree(runtime)


def refuse(tree, caller: Caller, times: int) -> list[int]:
    """Write a line /ctl/kill refuses `times` times as `caller`, one write each; the errnos."""
    handle = resolve(tree, "/ctl/kill").open(caller, writing=True, reading=False)
    return [refusal(lambda: handle.write(b"99\n")).errno for _ in range(times)]


def kill_line(caller: Caller) -> str:
    return f"/ctl/kill: no task 99 (uid {caller.uid})"


def test_a_burst_of_lines_then_every_write_still_refused(limited):
    """Ten refused writes in one window leave the first 3 reject lines, and all ten fail with their errno."""
    assert refuse(limited, NOISY, 10) == [errno.ENOENT] * 10
    assert rejects(limited.rt) == [kill_line(NOISY)] * 3


def test_the_next_window_opens_with_one_summary_line(limited):
    """The uid's first refusal once its window has ended writes how many were suppressed, then its own line;
    the counter counts every refusal then."""
    refuse(limited, NOISY, 10)
    limited.rt.clock.us += 9_999_999
    refuse(limited, NOISY, 1)
    assert rejects(limited.rt) == [kill_line(NOISY)] * 3
    limited.rt.clock.us += 1
    refuse(limited, NOISY, 2)
    assert rejects(limited.rt) == [kill_line(NOISY)] * 3 + [
        "8 more refused writes by uid 1000 suppressed", kill_line(NOISY), kill_line(NOISY)]
    assert limited.rt.kernel.counters.rejected == 13


def test_a_quiet_next_window_has_no_summary(limited):
    """A uid that stayed within its burst starts its next window without a summary line."""
    refuse(limited, NOISY, 3)
    limited.rt.clock.us += 10_000_000
    refuse(limited, NOISY, 1)
    assert rejects(limited.rt) == [kill_line(NOISY)] * 4


def test_a_clock_set_back_opens_the_next_window(limited):
    """A window is not stretched by a clock set back an hour (the host's was stepped): the next refusal
    opens a new one, with its summary."""
    refuse(limited, NOISY, 5)
    limited.rt.clock.us -= 3600_000_000
    refuse(limited, NOISY, 1)
    assert rejects(limited.rt)[3:] == ["2 more refused writes by uid 1000 suppressed", kill_line(NOISY)]


def test_one_noisy_uid_does_not_suppress_another(limited):
    """A uid past its burst leaves another uid's reject lines in the same window to it."""
    refuse(limited, NOISY, 10)
    refuse(limited, QUIET, 2)
    assert rejects(limited.rt) == [kill_line(NOISY)] * 3 + [kill_line(QUIET)] * 2


def test_a_replay_writes_the_same_lines_and_verifies(tmp_path):
    """The journal holds the lines written and their summary: `replay --verify` finds the trace reproduced."""
    with open_runtime(tmp_path, LIMITED) as runtime:
        runtime.clock = StillClock()
        tree = Tree(runtime)
        refuse(tree, NOISY, 6)
        runtime.clock.us += 10_000_000
        refuse(tree, NOISY, 1)
        written = rejects(runtime)
    journal = verify.open_journal(str(tmp_path / "state"))
    try:
        report = verify.verify(journal)
        replayed = verify.rebuilt(journal)
    finally:
        journal.close()
    assert report.divergence is None and report.lines >= len(written) == 5, report
    assert [row["detail"] for row in trace_rows(replayed) if row["type"] == "reject"] == written
    assert written[3] == "3 more refused writes by uid 1000 suppressed"


def test_the_kernel_writes_a_summary_before_the_line_that_carries_it():
    """A Rejected event that sums up 4 suppressed refusals writes the summary line, then its own, and counts 5."""
    kernel = Kernel(kernel_config())
    kernel.apply(Rejected(path="/ctl/submit", reason="bad line", uid=3, suppressed=4), 1)
    assert [row["detail"] for row in trace_rows(kernel)][-2:] == [
        "4 more refused writes by uid 3 suppressed", "/ctl/submit: bad line (uid 3)"]
    assert kernel.counters.rejected == 5


@pytest.mark.parametrize("key, value", [("reject_lines", 0), ("reject_window_s", 0), ("reject_window_s", "60")])
def test_a_bad_limit_is_refused_at_start(tmp_path, key, value):
    """reject_lines below 1, or a window that is not a number of seconds > 0, stops the daemon naming the key."""
    path = tmp_path / "config.toml"
    path.write_text(f"[limits]\n{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(Invalid, match=f"limits.{key}"):
        config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)


def audit_details(rt) -> list[tuple[str, str]]:
    """The audit trail's (result, detail) pairs, in order."""
    rows = csv.DictReader(io.StringIO(rt.kernel.audit.view()[0].decode()))
    return [(row["result"], row["detail"]) for row in rows]


def rejected_metric(rt) -> int:
    """apeinx_rejected_writes_total as /metrics serves it."""
    return int(re.search(r"^apeinx_rejected_writes_total (\d+)$", metrics.show(rt), re.M).group(1))


def test_cheap_refusals_leave_denials_their_own_window(limited):
    """A uid that spent its burst on refused kills still has each of its next 3 denials audited."""
    refuse(limited, NOISY, 10)
    for index in range(3):
        limited.rt.reject("/ctl/tenants", Denied(f"refused {index}"), uid=NOISY.uid)
    assert audit_details(limited.rt) == [("denied", f"refused {index}") for index in range(3)]


def test_suppressed_denials_are_counted_in_the_audit(limited):
    """Denials past the burst are summed up in the audit trail (and the trace) when the next window opens."""
    for index in range(5):
        limited.rt.reject("/ctl/tenants", Denied(f"refused {index}"), uid=NOISY.uid)
    limited.rt.clock.us += 10_000_000
    limited.rt.reject("/ctl/tenants", Denied("refused 5"), uid=NOISY.uid)
    assert audit_details(limited.rt)[3:] == [("suppressed", "2 more denials by uid 1000 suppressed"),
                                             ("denied", "refused 5")]
    assert rejects(limited.rt)[3] == "2 more denials by uid 1000 suppressed"


def test_all_uids_together_leave_at_most_ten_bursts(limited):
    """Eleven uids of 3 refusals each in one window leave 30 reject lines (REJECT_OVERALL bursts); all 33 count."""
    for uid in range(2000, 2011):
        refuse(limited, Caller(uid=uid, pid=11, role="user"), 3)
    assert len(rejects(limited.rt)) == 3 * REJECT_OVERALL == 30
    assert rejected_metric(limited.rt) == 33


def test_the_metric_never_goes_down_when_windows_are_forgotten(limited):
    """A noisy uid's 7 suppressed refusals stay in apeinx_rejected_writes_total after KEYS_MAX other uids push its
    ended window out of the table."""
    refuse(limited, NOISY, 10)
    limited.rt.clock.us += 10_000_000
    for uid in range(5000, 5000 + KEYS_MAX):
        limited.rt.reject("/ctl/kill", Invalid("no task 99"), uid=uid)
    assert (NOISY.uid, False) not in limited.rt.reject_lines.windows
    assert rejected_metric(limited.rt) == 10 + KEYS_MAX


def test_a_full_table_keeps_every_live_window_and_its_count():
    """Past KEYS_MAX keys in one window the noisy key keeps its window (no fresh burst) and its count."""
    windows = Windows(burst=1, window_s=10)
    windows.admit("noisy", 0)
    assert windows.admit("noisy", 0) == (False, None)
    for key in range(KEYS_MAX):
        windows.admit(key, 1)
    assert windows.admit("noisy", 2) == (False, None)
    assert windows.windows["noisy"].suppressed == 2 == windows.untold and len(windows.windows) == KEYS_MAX


def test_a_row_with_nothing_suppressed_is_read_by_older_code():
    """A plain Rejected row holds no `suppressed` (yesterday's Rejected, without it, reads it); a summary does."""
    older = attrs.make_class("Rejected", {name: attrs.field(default=None) for name in (
        "path", "reason", "errno", "denial", "uid", "caller_pid", "caller_tenant")})
    plain = json.loads(to_row(Rejected(path="/ctl/kill", reason="no task 99", uid=3))[1])
    assert older(**plain).reason == "no task 99"
    assert json.loads(to_row(Rejected(path="/ctl/kill", reason="r", suppressed=2))[1])["suppressed"] == 2


def test_a_negative_suppressed_count_is_refused():
    """A Rejected row cannot lower the refusal counter with a negative suppressed count."""
    with pytest.raises(ValueError):
        Rejected(path="/ctl/kill", reason="r", suppressed=-5)


def test_a_summary_the_journal_could_not_take_goes_with_the_next_line(tmp_path):
    """A summary whose row failed (the journal full) is kept in the metric and told when the uid's next window opens."""
    with open_runtime(tmp_path, LIMITED) as runtime:
        runtime.clock, runtime.journal.db = StillClock(), FailingDb(runtime.journal.db)
        tree = Tree(runtime)
        refuse(tree, NOISY, 5)
        runtime.clock.us += 10_000_000
        runtime.journal.db.fault = full_error
        refuse(tree, NOISY, 1)
        assert rejected_metric(runtime) == 5  # 3 lines and 2 suppressed; the one refused while degraded is not
        runtime.journal.db.fault = None
        assert runtime.health.recover(runtime.kernel, runtime.journal, runtime.clock.now_us())
        runtime.clock.us += 10_000_000
        refuse(tree, NOISY, 1)
        assert rejects(runtime)[-2:] == ["2 more refused writes by uid 1000 suppressed", kill_line(NOISY)]
        assert rejected_metric(runtime) == 6
