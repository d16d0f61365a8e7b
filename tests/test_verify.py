"""Tier 1-2: `apeinxfs replay --verify` (verify.py) on journals written by a Runtime in tmp_path.

A mixed workload (every submit form, kills, stop/cont/prio, refused writes, engine steps
under trio's autojump clock, a restart) verifies; one altered, deleted or crash-lost row
is named or tolerated as it should be; the per-boot kernel config and the boot-record
round trip are checked. No FUSE here: tests/test_verify_mount.py runs a real daemon.
"""
import json
import os
import sqlite3

import attrs
import pytest
import trio
import trio.testing

from apeinxfs import config as config_mod
from apeinxfs import simulate, verify
from apeinxfs.journal import FLUSH_ROWS, Journal, row_crc
from apeinxfs.kernel import kernel as kernel_module
from apeinxfs.kernel.config import kernel_config_from_dict
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import EngineHealth, Tick, to_row
from apeinxfs.nodes import ctl, sched
from apeinxfs.nodes.models import models_ctl
from apeinxfs.nodes.base import Caller
from apeinxfs.runtime import Runtime
from test_journal_runtime import ONE_GPU, open_runtime, run_until_done
from test_journal_runtime import submit as commit_submit

AGENTS_CSV = os.path.join(os.path.dirname(__file__), "..", "examples", "workloads", "agents.csv")
USER = Caller(uid=1000)
SUBMITS = [b"seed 6 5", b"seedline 4 2 30s", b'name=pairs max_tokens=5 prompt="hello there" prio=7',
           b'{"name": "json", "max_tokens": 3, "prompt": "from json", "deadline": 60}',
           b"long 20000 5", b"short 400 5 50ms"]


def write(command, *lines: bytes) -> list[str]:
    """Run a ctl command as uid 1000; a refusal (journaled as a reject) comes back as its reason."""
    try:
        return command(list(lines), USER)
    except ApeinxError as exc:
        return [exc.reason]


async def mixed_workload(rt) -> None:
    """Submits of all three forms and a child, refusals, stop/cont/prio, kills, policy switches, steps to the end."""
    pids = [int(p) for p in write(ctl.submit(rt), *SUBMITS)]
    pids += [int(p) for p in write(ctl.submit(rt), f"name=child max_tokens=4 parent={pids[2]}".encode())]
    write(ctl.submit(rt), b"bad line with too many fields here")
    write(sched.set_policy(rt), b"vtc")
    write(sched.set_policy(rt), b"no-such-policy")
    write(ctl.kill(rt), b"999")
    write(ctl.task_ctl(rt, pids[0]), b"stop")
    write(ctl.task_ctl(rt, pids[0]), b"prio 9")
    write(ctl.task_ctl(rt, pids[0]), b"stop")  # already stopped: refused
    write(ctl.task_ctl(rt, pids[0]), b"cont")
    write(ctl.kill(rt), str(pids[4]).encode())
    write(sched.set_policy(rt), b"fair")
    await run_until_done(rt, pids)


def state_dir(tmp_path) -> str:
    return str(tmp_path / "state")


def run_verify(tmp_path) -> verify.Report:
    journal = verify.open_journal(state_dir(tmp_path))
    try:
        return verify.verify(journal)
    finally:
        journal.close()


def journal_rows(tmp_path, table: str = "journal") -> int:
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def alter(tmp_path, sql: str, *args) -> None:
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        assert db.execute(sql, args).rowcount == 1


ALTER_STEP_TEXT = "UPDATE journal SET body = replace(body, ',\"', ',\"X') WHERE seq = ?"  # each text of a steps row


def row_of(tmp_path, kind: str, contains: str) -> int:
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        query = "SELECT min(seq) FROM journal WHERE kind = ? AND instr(body, ?) > 0"
        return db.execute(query, (kind, contains)).fetchone()[0]


@pytest.fixture
def journaled(tmp_path) -> int:
    """tmp_path/state after a mixed workload, a restart with a task running, more work; its trace line count."""
    async def two_boots():
        with open_runtime(tmp_path) as first:
            await mixed_workload(first)
            write(ctl.submit(first), b"across 8 5")  # running when the daemon stops: requeued at restart
        with open_runtime(tmp_path) as second:
            second.recover()
            await mixed_workload(second)
            return second.kernel.trace.seq  # one seq per line
    return trio.run(two_boots, clock=trio.testing.MockClock(autojump_threshold=0))


# -- passing ---------------------------------------------------------------------------------------


def test_mixed_workload_with_a_restart_verifies(tmp_path, journaled):
    """Every row of a mixed two-boot journal is replayed and checked, and every trace line matches."""
    report = run_verify(tmp_path)
    assert report.divergence is None
    assert report.events == report.checked == journal_rows(tmp_path) > 30
    assert report.lines == journaled


def test_command_line_says_ok_and_exits_zero(tmp_path, journaled, capsys):
    """`replay --verify` prints the OK line and exits 0; --json prints the same report as JSON."""
    assert verify.main(["--verify", state_dir(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {journal_rows(tmp_path)} events, {journaled} trace lines")
    assert verify.main(["--verify", "--json", state_dir(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["divergence"] is None and report["lines"] == journaled


def test_each_boot_replays_under_its_own_config(tmp_path):
    """A restart with two GPUs instead of one re-runs the whole journal under the new config, as the daemon did."""
    two_gpus = ONE_GPU.replace("simulated = 1", "simulated = 2")
    for toml in (ONE_GPU, two_gpus):
        with open_runtime(tmp_path, toml) as rt:
            rt.recover()
            write(ctl.submit(rt), *[f"t{i} 50 5".encode() for i in range(12)])
    report = run_verify(tmp_path)
    assert report.divergence is None and report.checked == journal_rows(tmp_path) == 12 + 1 + 12


def test_sim_run_verifies_and_an_altered_step_is_named(tmp_path, capsys):
    """The state directory of `apeinxfs sim --state-dir` verifies whole; editing one step's text names that row."""
    assert simulate.main([AGENTS_CSV, "--gpus", "2", "--state-dir", state_dir(tmp_path), "--report", "json"]) == 0
    capsys.readouterr()
    report = run_verify(tmp_path)
    assert report.divergence is None and report.checked == report.events == journal_rows(tmp_path) > 100
    row = row_of(tmp_path, "steps", ',"')
    alter(tmp_path, ALTER_STEP_TEXT, row)
    assert run_verify(tmp_path).divergence.seq == row


def test_rows_of_a_crash_are_replayed_unchecked(tmp_path):
    """Trace rows lost in a crash leave their journal rows unchecked but the verification passes."""
    (tmp_path / "config.toml").write_text(ONE_GPU)
    config = config_mod.load(str(tmp_path / "config.toml"), state_dir(tmp_path), use_nvml=False)
    crashed = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")))
    write(ctl.submit(crashed), b"a 5 5")
    write(ctl.kill(crashed), b"1")
    crashed.journal.db.close()  # as at kill -9: Journal.close never writes the pending trace rows
    with open_runtime(tmp_path) as restarted:
        restarted.recover()
        write(ctl.submit(restarted), b"b 5 5")
    report = run_verify(tmp_path)
    assert report.divergence is None
    assert (report.events, report.checked) == (4, 2)
    assert "2 events have no trace row" in str(report)


def test_trace_rows_go_in_batches_with_a_later_commit_and_at_close(tmp_path):
    """Trace rows wait until FLUSH_ROWS are pending, then go with the next commit; close writes the rest."""
    with open_runtime(tmp_path) as rt:
        for _ in range(FLUSH_ROWS):
            rt.commit([Tick()])
        assert journal_rows(tmp_path, "trace") == 0
        rt.commit([Tick()])
        assert journal_rows(tmp_path, "trace") == FLUSH_ROWS
    assert journal_rows(tmp_path, "trace") == journal_rows(tmp_path) == FLUSH_ROWS + 1


def test_boot_record_round_trips_the_kernel_config(tmp_path):
    """The config a Runtime records at boot comes back equal through kernel_config_from_dict."""
    with open_runtime(tmp_path) as rt:
        booted = rt.config.kernel
    journal = verify.open_journal(state_dir(tmp_path))
    recorded = journal.boots()[0].config
    journal.close()
    assert kernel_config_from_dict(recorded) == booted
    assert kernel_config_from_dict(attrs.asdict(booted)) == booted


def test_replay_prints_the_rebuilt_trace_and_a_timeline(tmp_path, journaled, capsys):
    """`replay STATE_DIR` prints the whole rebuilt trace; with a PID, that task's timeline."""
    assert verify.main([state_dir(tmp_path)]) == 0
    trace = capsys.readouterr().out
    assert trace.startswith("seq,time_us,type,") and len(trace.splitlines()) == journaled + 1
    assert verify.main([state_dir(tmp_path), "3"]) == 0
    assert capsys.readouterr().out.startswith("pid 3 pairs model=sim tenant=default exit=done\n")


# -- failing ---------------------------------------------------------------------------------------


def test_altered_submit_is_named_with_both_lines(tmp_path, journaled):
    """A submit whose max_tokens was edited diverges at its own row, showing the recorded and the new line."""
    row = row_of(tmp_path, "submit", '"name":"pairs"')
    alter(tmp_path, "UPDATE journal SET body = replace(body, '\"max_tokens\":5', '\"max_tokens\":6') WHERE seq = ?",
          row)
    divergence = run_verify(tmp_path).divergence
    assert (divergence.seq, divergence.kind) == (row, "submit")
    assert "max_tokens=5" in divergence.expected and "max_tokens=6" in divergence.got


def test_altered_step_text_is_named(tmp_path, journaled, capsys):
    """A step whose chunk text was edited (no trace line changes) diverges at its row by its CRC; exit 1."""
    row = row_of(tmp_path, "steps", ',"')
    alter(tmp_path, ALTER_STEP_TEXT, row)
    assert verify.main(["--verify", state_dir(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"DIVERGED at journal row {row} (steps, time_us ") and "altered row" in out


def test_deleted_row_is_named(tmp_path, journaled):
    """A row deleted from the middle of the journal is named as missing."""
    alter(tmp_path, "DELETE FROM journal WHERE seq = 5")
    divergence = run_verify(tmp_path).divergence
    assert (divergence.seq, divergence.kind) == (5, "missing")


def test_unreadable_row_is_named(tmp_path, journaled):
    """A row that no longer parses diverges at that row with the error instead of crashing verify."""
    alter(tmp_path, "UPDATE journal SET body = '{' WHERE seq = 2")
    divergence = run_verify(tmp_path).divergence
    assert divergence.seq == 2 and divergence.got.startswith("JSONDecodeError")


def test_journal_without_boot_record_cannot_be_verified(tmp_path, capsys):
    """A journal with rows but no boot record, or no journal at all, exits 2 with a reason on stderr."""
    assert verify.main(["--verify", state_dir(tmp_path)]) == 2
    assert "no journal at" in capsys.readouterr().err
    journal = Journal(str(tmp_path / "state" / "journal.db"))
    journal.append([(1, Tick())])
    journal.close()
    assert verify.main(["--verify", state_dir(tmp_path)]) == 2
    assert "no boot record" in capsys.readouterr().err


def journal_row(tmp_path, seq: int) -> tuple[str, str]:
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        return db.execute("SELECT kind, body FROM journal WHERE seq = ?", (seq,)).fetchone()


SECRET_ADD = b"add ext driver=openai url=http://bob:s3cret@127.0.0.1:9 retries=0"


def test_a_model_add_journals_the_url_without_its_credentials(tmp_path):
    """A new `add` journals its line with the URL's credentials hidden, and that journal verifies."""
    with open_runtime(tmp_path) as rt:
        write(models_ctl(rt), SECRET_ADD)
        assert rt.kernel.models["ext"].options["url"] == "http://bob:s3cret@127.0.0.1:9"
    assert row_of(tmp_path, "setmodel", "add ext driver=openai url=http://***@127.0.0.1:9") is not None
    assert row_of(tmp_path, "setmodel", "bob:s3cret@127.0.0.1:9 retries") is None
    assert run_verify(tmp_path).divergence is None


@pytest.mark.parametrize("traced", ["bob:s3cret@", "***@"])
def test_an_add_journaled_with_its_credentials_verifies(tmp_path, traced):
    """An old journal's add row holding the URL's credentials verifies, whether its trace held them too (before the
    kernel hid them) or not (the kernel hid them at apply, the row not yet)."""
    with open_runtime(tmp_path) as rt:
        write(models_ctl(rt), SECRET_ADD)
    seq = row_of(tmp_path, "setmodel", "add ext")
    alter(tmp_path, "UPDATE journal SET body = replace(body, '***@', 'bob:s3cret@') WHERE seq = ?", seq)
    alter(tmp_path, "UPDATE trace SET lines = replace(lines, '***@', ?), crc = ? WHERE row = ?",
          traced, row_crc(*journal_row(tmp_path, seq)), seq)
    assert run_verify(tmp_path).divergence is None


def test_a_replayed_line_that_shows_credentials_again_diverges(tmp_path, monkeypatch):
    """An old add row holding the URL's credentials, its trace hiding them: a kernel that shows them again (its
    hiding undone here) diverges at that row."""
    with open_runtime(tmp_path) as rt:
        write(models_ctl(rt), SECRET_ADD)
    seq = row_of(tmp_path, "setmodel", "add ext")
    alter(tmp_path, "UPDATE journal SET body = replace(body, '***@', 'bob:s3cret@') WHERE seq = ?", seq)
    alter(tmp_path, "UPDATE trace SET crc = ? WHERE row = ?", row_crc(*journal_row(tmp_path, seq)), seq)
    assert run_verify(tmp_path).divergence is None
    monkeypatch.setattr(kernel_module, "redacted", lambda text: text)
    divergence = run_verify(tmp_path).divergence
    assert divergence is not None and divergence.seq == seq and "bob:s3cret@" in divergence.got


TWO_BOUND_MODELS = """
[gpus]
simulated = 2
slots = 1
[[models]]
name = "a"
endpoints = [{url = "http://127.0.0.1:1", gpus = [0]}]
[[models]]
name = "b"
endpoints = [{url = "http://127.0.0.1:2", gpus = [1]}]
"""


def test_a_backfill_traced_in_the_old_words_verifies(tmp_path):
    """A journal whose trace has a dispatch as traced before `backfill past pid N` (`backfill past N (`)
    verifies; the same line naming another pid diverges."""
    with open_runtime(tmp_path, TWO_BOUND_MODELS) as rt:
        head = [commit_submit(rt, model="a") for _ in range(2)][1]
        commit_submit(rt, model="b")
    assert f"backfill past pid {head} (" in rt.kernel.trace.buffer.decode()
    alter(tmp_path, "UPDATE trace SET lines = replace(lines, 'backfill past pid ', 'backfill past ') "
                    "WHERE instr(lines, 'backfill past pid ') > 0")
    assert run_verify(tmp_path).divergence is None
    alter(tmp_path, "UPDATE trace SET lines = replace(lines, ?, ?) WHERE instr(lines, ?) > 0",
          f"backfill past {head} (", "backfill past 9 (", f"backfill past {head} (")
    divergence = run_verify(tmp_path).divergence
    assert divergence is not None and "backfill past 9 (" in divergence.expected


@pytest.mark.parametrize("recorded, replayed, same", [
    ("add x url=http://bob:pw@h", "add x url=http://***@h", True),
    ("add x url=http://***@h", "add x url=http://***@h", True),
    ("add x url=http://***@h", "add x url=http://bob:pw@h", False),
    ("add x url=ssh://alice@srv", "add x url=ssh://bob@srv", False),
    ('7,1,dispatch,4,b,m,2,,"fair: backfill past 3 (its GPUs are full), then x"',
     '7,1,dispatch,4,b,m,2,,"fair: backfill past pid 3 (its GPUs are full), then x"', True),
    ('7,1,dispatch,4,b,m,2,,"fair: backfill past pid 3 (its GPUs are full), then x"',
     '7,1,dispatch,4,b,m,2,,"fair: backfill past 3 (its GPUs are full), then x"', False),
    ('7,1,dispatch,4,b,m,2,,"fair: backfill past 3 (its GPUs are full), then x"',
     '7,1,dispatch,4,b,m,2,,"fair: backfill past pid 5 (its GPUs are full), then x"', False),
    ('7,1,note,4,b,m,2,,"fair: backfill past 3 (its GPUs are full), then x"',
     '7,1,note,4,b,m,2,,"fair: backfill past pid 3 (its GPUs are full), then x"', False),
    ('7,1,dispatch,4,b,m,2,,"x; fair: backfill past 3 (its GPUs are full)"',
     '7,1,dispatch,4,b,m,2,,"x; fair: backfill past pid 3 (its GPUs are full)"', False),
])
def test_alike_takes_a_recorded_line_as_recorded_or_with_its_credentials_hidden(recorded, replayed, same):
    """A recorded line matches the replayed one as recorded, or hidden and in today's words (a dispatch's detail
    that starts `POLICY: backfill past N (` alone), never the other way round."""
    assert verify.alike(recorded, replayed) is same


@pytest.mark.parametrize("replayed, same", [
    ('"x down: http://***@h@0; wait"', True),
    ('"x down: http://bob:pw@h@0; wait"', True),
    ('"x down: http://bob:pw@h@1; wait"', False),
])
def test_alike_hides_credentials_in_each_reason_of_the_row_as_the_kernel_does(replayed, same):
    """With its journal row, a recorded line matches the replayed one with the credentials hidden in each reason
    (`@h@0` ends in a GPU there, in a host followed by `;`), never one that shows what the reason hid."""
    row = (5, 1, *to_row(EngineHealth(model="x", up=False, reason="http://bob:pw@h@0")))
    assert verify.alike('"x down: http://bob:pw@h@0; wait"', replayed, row) is same
