"""Tier 1-2: a journal that cannot be written (journal.py, health.py, runtime.py), without FUSE.

Faults are injected three ways: SQLite's own `max_page_count`, which makes a real write fail
with SQLITE_FULL, a connection stand-in whose writes raise what a failing disk makes
SQLite or the OS raise (EROFS, EIO), and a journal file damaged on disk (SQLITE_CORRUPT). The runtime goes degraded, refuses state changes with
the errno, pauses the sim driver's tasks under trio's autojump clock (and the openai
driver's streams, against test_openai_driver's fake engine on the real clock), and
resumes by itself once writes work; `replay --verify` (verify.py) then passes.
"""
import csv
import errno
import io
import os
import sqlite3

import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs import health
from apeinxfs.drivers.sim import word
from apeinxfs.journal import Emitted, Journal, NullJournal
from apeinxfs.kernel.errors import Degraded
from apeinxfs.kernel.events import JournalFailed, JournalRecovered, Tick
from apeinxfs.kernel.trace import TraceLog
from apeinxfs.runtime import PROBE_S
from apeinxfs.verify import verify
from test_journal_runtime import open_runtime, submit
from test_openai_driver import FakeEngine, engine_config
import runtasks


def readonly_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("attempt to write a readonly database")
    error.sqlite_errorcode = sqlite3.SQLITE_READONLY
    return error


def full_error() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    return error


FAULTS = [(full_error, errno.ENOSPC), (readonly_error, errno.EROFS),
          (lambda: OSError(errno.EIO, "Input/output error"), errno.EIO)]


class FailingDb:
    """A journal's SQLite connection whose writes raise `fault()` while `fault` is set."""

    def __init__(self, db):
        self.db, self.fault = db, None

    def executemany(self, *args):
        if self.fault is not None:
            raise self.fault()
        return self.db.executemany(*args)

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)


@pytest.fixture
def rt(tmp_path):
    with open_runtime(tmp_path) as runtime:
        runtime.journal.db = FailingDb(runtime.journal.db)
        yield runtime


def journaled(rt) -> list:
    return [event for _, _, event in rt.journal.replay()]


def trace_rows(buffer) -> list[dict]:
    return list(csv.DictReader(io.StringIO(bytes(buffer).decode())))


def verified(tmp_path):
    """verify.py's report on the runtime's state directory, after the runtime closed its journal."""
    journal = Journal(str(tmp_path / "state" / "journal.db"), readonly=True)
    try:
        return verify(journal)
    finally:
        journal.close()


# -- the journal -------------------------------------------------------------------------------------


def test_a_full_database_refuses_the_append_and_keeps_working(tmp_path):
    """SQLite at its max_page_count: the append raises ENOSPC, journals nothing, and works once there is room."""
    journal = Journal(str(tmp_path / "j.db"))
    pages = journal.db.execute("PRAGMA page_count").fetchone()[0]
    journal.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(Degraded) as caught:
        for time_us in range(1, 10_000):
            journal.append([(time_us, JournalFailed(errno=0, reason="x" * 500))])
    kept = len(journal)
    assert caught.value.errno == errno.ENOSPC and "database or disk is full" in caught.value.reason
    assert journal.last_seq == kept and not journal.db.in_transaction
    journal.db.execute(f"PRAGMA max_page_count = {pages * 100}")
    assert journal.append([(10_000, Tick())]) == range(kept + 1, kept + 2)
    journal.close()
    assert [seq for seq, *_ in Journal(str(tmp_path / "j.db"), readonly=True).rows()] == list(range(1, kept + 2))


@pytest.mark.parametrize("fault,code", FAULTS)
def test_each_storage_fault_has_its_errno(tmp_path, fault, code):
    """SQLITE_FULL, SQLITE_READONLY and an OSError reach the writer as ENOSPC, EROFS and EIO, with words."""
    journal = Journal(str(tmp_path / "j.db"))
    journal.db = FailingDb(journal.db)
    journal.db.fault = fault
    with pytest.raises(Degraded) as caught:
        journal.append([(1, Tick())])
    assert caught.value.errno == code
    reason = caught.value.reason
    assert reason.startswith("the journal cannot be written: ") and errno.errorcode[code] in reason
    assert journal.last_seq == 0 and len(journal) == 0
    journal.close()


def test_close_on_a_failing_disk_raises_after_closing_and_keeps_every_row(tmp_path):
    """Trace rows still pending at close on a failing disk: Degraded, the file closed, every journal row kept."""
    journal = Journal(str(tmp_path / "j.db"))
    journal.boot(config_mod.load(None, str(tmp_path), use_nvml=False).kernel)
    seq = journal.append([(1, Tick())])[0]
    with journal.recording(seq, TraceLog("local")):
        pass
    journal.db = FailingDb(journal.db)
    journal.db.fault = full_error
    with pytest.raises(Degraded):
        journal.close()
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        journal.db.execute("SELECT 1")
    assert len(Journal(str(tmp_path / "j.db"), readonly=True)) == 1


def damage(path) -> None:
    """Overwrite every page of the SQLite file at `path` but the first (the schema) with garbage, then make
    another connection write, as another process would: the journal's connection then reads its pages again."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    with open(path, "r+b") as file:
        file.seek(page)
        file.write(b"\xa5" * (os.path.getsize(path) - page))
    db.execute("PRAGMA user_version = 1")
    db.close()


# -- the runtime ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault,code", FAULTS)
def test_a_failed_commit_changes_nothing_and_degrades(rt, fault, code):
    """The failing submit gets the errno and adds no task; later changes are refused with it; /health says why."""
    pid = submit(rt)
    rt.journal.db.fault = fault
    for _ in range(2):  # the write that failed, then one refused because the daemon is degraded
        with pytest.raises(Degraded) as caught:
            submit(rt, name="lost")
        assert caught.value.errno == code
    rt.journal.db.fault = None
    with pytest.raises(Degraded, match="state changes are refused until it can be"):
        submit(rt, name="refused")
    assert list(rt.kernel.tasks) == [pid] and len(journaled(rt)) == 1
    status = dict(line.split(":\t") for line in health.show(rt.health).splitlines())
    assert status["State"] == "degraded" and status["Errno"] == errno.errorcode[code]
    assert status["Reason"].startswith("the journal cannot be written") and int(status["Since"]) > 0
    assert trace_rows(rt.kernel.trace.buffer)[-1]["type"] == "degraded"


def test_a_refusal_keeps_its_own_errno_while_degraded(rt):
    """Recording a refused write cannot fail it: reject() is a no-op while the journal cannot be written."""
    rt.journal.db.fault = full_error
    rt.reject("/ctl/submit", Degraded(errno.EINVAL, "bad line"), uid=1000)
    assert rt.health.fault is not None and rt.kernel.counters.rejected == 0


async def test_running_tasks_pause_while_degraded_and_resume_by_themselves(tmp_path, autojump_clock):
    """The driver gets no batch while the journal cannot be written, and no token is lost: the text
    is the sim's, in order; the daemon recovers within PROBE_S of the journal working, and the episode
    replays identically."""
    prompts = ["first prompt", "second prompt"]
    with open_runtime(tmp_path) as rt:
        rt.journal.db = FailingDb(rt.journal.db)
        pids = [submit(rt, tokens=40, prompt=p) for p in prompts]
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            while rt.kernel.tasks[pids[0]].tokens_out < 5:
                await rt.wait_for(pids[0], 1.0)
            rt.journal.db.fault = full_error
            while rt.health.fault is None:
                await trio.sleep(0.01)
            paused = [rt.kernel.tasks[p].tokens_out for p in pids]
            await trio.sleep(1)  # a step in flight when the journal failed is delivered, and dropped
            delivered, deliver = [], rt.deliver
            rt.deliver = lambda *events: delivered.append(events) or deliver(*events)
            await trio.sleep(30)
            assert delivered == [] and [rt.kernel.tasks[p].tokens_out for p in pids] == paused
            assert all(rt.kernel.tasks[p].state.name == "RUNNING" for p in pids)  # they keep their place
            rt.journal.db.fault = None
            with trio.fail_after(2 * PROBE_S):
                while rt.health.fault is not None:
                    await trio.sleep(0.01)
            with trio.fail_after(60):
                while not all(rt.kernel.tasks[p].done for p in pids):
                    await rt.wait_for(pids[0], 1.0)
            nursery.cancel_scope.cancel()
        for pid, prompt in zip(pids, prompts):
            assert rt.kernel.tasks[pid].output.decode() == "".join(word(0, prompt, i) for i in range(40))
        types = [row["type"] for row in trace_rows(rt.kernel.trace.buffer)]
        assert types.count("degraded") == types.count("recovered") == 1
        assert types.index("degraded") < types.index("recovered")
        kinds = [type(e) for e in journaled(rt)]
        assert kinds.index(JournalFailed) + 1 == kinds.index(JournalRecovered)
        rt.journal.flush()  # the last step (its exit line) is journaled a scheduling round after it is applied
        rows = len(list(rt.journal.rows()))
    report = verified(tmp_path)
    assert report.divergence is None and report.events == rows


async def test_an_engine_stream_stops_while_degraded_and_resumes_after_the_text_it_has(tmp_path, nursery):
    """The openai driver's stream is closed while the journal cannot be written; after recovery one new
    request asks for what the task still owes, after the text journaled, and the task ends done."""
    engine = await FakeEngine(delay=0.02).start(nursery)
    paused = {}

    async def fail_the_journal_for_a_while(rt, pids):
        task = rt.kernel.tasks[pids[0]]
        while task.tokens_out < 5:
            await rt.wait_for(pids[0], 1.0)
        rt.journal.db = FailingDb(rt.journal.db)
        rt.journal.db.fault = full_error
        with trio.fail_after(5):
            while not engine.closed_early:
                await trio.sleep(0.01)
        paused.update(tokens=task.tokens_out, text=task.output.decode())
        await trio.sleep(0.5)
        assert (task.tokens_out, len(engine.bodies)) == (paused["tokens"], 1)
        rt.journal.db.fault = None

    [task] = await runtasks.run_tasks(tmp_path, engine_config(engine.port), [{"name": "a", "max_tokens": 60}],
                                      fail_the_journal_for_a_while)
    assert (task.exit, task.tokens_out) == ("done", 60) and len(engine.bodies) == 2
    assert engine.bodies[1]["max_tokens"] == 60 - paused["tokens"]
    assert engine.bodies[1]["prompt"] == "a" + paused["text"]


async def test_a_deadline_that_falls_while_degraded_waits_for_recovery(tmp_path, autojump_clock):
    """The deadline timer does not spin or die on a failing journal; the task expires once writes work."""
    with open_runtime(tmp_path) as rt:
        rt.journal.db = FailingDb(rt.journal.db)
        pid = submit(rt, name="slow", tokens=10_000, deadline_us=2_000_000)
        rt.journal.db.fault = full_error
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            await trio.sleep(5)
            assert not rt.kernel.tasks[pid].done and rt.health.fault is not None
            rt.journal.db.fault = None
            with trio.fail_after(10):
                await rt.wait_for(pid, 9.0)
            nursery.cancel_scope.cancel()
        assert rt.kernel.tasks[pid].exit == "expired" and rt.health.fault is None
    assert verified(tmp_path).divergence is None


def test_a_damaged_journal_file_degrades_with_eio_as_a_failing_disk_does(tmp_path):
    """A journal file damaged on disk (SQLITE_CORRUPT, a DatabaseError): the submit and the flush of the steps
    waiting get EIO, the daemon is degraded with SQLite's words, and later changes are refused."""
    with open_runtime(tmp_path) as rt:
        for name in ("a", "b", "c"):
            submit(rt, name=name)
        damage(rt.journal.path)
        with pytest.raises(Degraded) as caught:
            submit(rt, name="lost")
        assert caught.value.errno == errno.EIO and "malformed" in caught.value.reason
        status = dict(line.split(":\t") for line in health.show(rt.health).splitlines())
        assert status["State"] == "degraded" and status["Errno"] == "EIO" and "malformed" in status["Reason"]
        rt.journal.defer(1, Tick(), Emitted(rt.kernel.trace))
        with pytest.raises(Degraded, match="malformed"):
            rt.journal.flush()
        with pytest.raises(Degraded, match="refused"):
            submit(rt, name="refused")
        with pytest.raises(Degraded, match="malformed"):  # the trace rows pending cannot go either
            rt.journal.close()
        rt.journal = NullJournal()  # closed: nothing left for open_runtime to close


def test_a_misuse_of_sqlite_is_a_bug_and_leaves_the_daemon_healthy(tmp_path):
    """A row whose seq the journal already holds (IntegrityError: the daemon's own bug, not the disk's) is
    raised as it is, nothing of it journaled or applied, and the daemon is not degraded: a storage fault
    would refuse every change for good under words blaming the disk."""
    with open_runtime(tmp_path) as rt:
        submit(rt, name="a")
        rt.journal.flush()
        with sqlite3.connect(rt.journal.path) as other:
            other.execute("INSERT INTO journal (seq, time_us, kind, body) VALUES (?, 0, 'tick', '{}')",
                          (rt.journal.last_seq + 1,))
        tasks, seq = len(rt.kernel.tasks), rt.journal.last_seq
        with pytest.raises(sqlite3.IntegrityError):
            submit(rt, name="b")  # open_runtime commits every row
        assert rt.health.fault is None and len(rt.kernel.tasks) == tasks and rt.journal.last_seq == seq
