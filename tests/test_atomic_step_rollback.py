"""Tier 2: the rollback after a bug in the middle of a step (stepbugs.py) in the cases where it cannot be made, or
could do harm: a bug every event meets, a journal that batches rows or keeps none, a journal outage, a rebuild
that cannot start, engine text that cannot be UTF-8, many bugs in a row; no FUSE. A task that cannot be failed:
test_atomic_step_stuck.py.
"""
import contextlib
import json

import hypothesis
import pytest
from hypothesis import strategies as st

from apeinxfs import config as config_mod
from apeinxfs.compaction import CannotStart
from apeinxfs.drivers import sse
from apeinxfs.journal import Journal, NullJournal, Unreadable
from apeinxfs.kernel.events import Chunk, Step
from apeinxfs.kernel.moves import Moves
from apeinxfs.kernel.tenancy import Tenancy
from apeinxfs.runtime import Runtime
from apeinxfs.stepbugs import ROLLBACK_WINDOW_S, ROLLBACKS
from test_atomic_step import faulty, replayed_difference, started
from test_journal_runtime import ONE_GPU, open_runtime, submit
from test_snapshots import daemon_like, snapshot
from test_storage_faults import FailingDb, full_error


@contextlib.contextmanager
def runtime_on(tmp_path, journal):
    """A Runtime booted from ONE_GPU on `journal(state directory)`; its journal closed after."""
    (tmp_path / "config.toml").write_text(ONE_GPU)
    config = config_mod.load(str(tmp_path / "config.toml"), str(tmp_path / "state"), use_nvml=False)
    runtime = Runtime(config, journal(tmp_path / "state"))
    try:
        yield runtime
    finally:
        runtime.journal.close()


@pytest.mark.parametrize("error", [RuntimeError, MemoryError, RecursionError])
def test_a_bug_in_the_scheduling_every_event_runs_loses_the_round(tmp_path, monkeypatch, error):
    """A bug in the scheduling pass every event runs: the rollback's rebuild meets it at the first row, so it is
    given up and the bug raised as it came; no row is quarantined, no task lost, the journal replays to them."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        real = Moves.schedule

        def failing(self):
            raise error("a bug in schedule")
        monkeypatch.setattr(Moves, "schedule", failing)
        with pytest.raises(error, match="a bug in schedule"):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "s", 1) for pid in pids]))
        monkeypatch.setattr(Moves, "schedule", real)
        assert rt.quarantined == {} and sorted(rt.kernel.tasks) == pids
        assert sorted(rt.rebuilt(rt.journal.rows, {})[0].tasks) == pids


def test_the_rollback_rebuilds_from_the_rows_a_batching_journal_has_not_written(tmp_path, monkeypatch):
    """With rows_per_commit batching (as `apeinxfs sim --journal`), the rows waiting for their commit are in the
    rollback's kernel: task 2 fails, the others keep their text, and no task is lost."""
    with runtime_on(tmp_path, lambda state: Journal(str(state / "journal.db"), rows_per_commit=50)) as rt:
        pids = started(rt, 3)
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "a", 1) for pid in pids]))  # deferred, then in a waiting row
        faulty(monkeypatch, "charge", pids[1], times=1)  # not again in the rebuild, which replays the step above
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "b", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].output for pid in pids] == [b"ab", b"a", b"ab"]
        assert rt.kernel.tasks[pids[1]].exit.startswith("failed: kernel bug: RuntimeError at ")
        rt.journal.flush_all()  # the rows waiting, written
        assert replayed_difference(rt) == ""


def test_a_journal_that_keeps_no_rows_raises_the_bug_itself(tmp_path, monkeypatch):
    """With a NullJournal (`apeinxfs sim`) there is nothing to roll back to: the bug raises as it came, not as an
    error of the rollback."""
    with runtime_on(tmp_path, lambda state: NullJournal()) as rt:
        pids = started(rt, 3)
        faulty(monkeypatch, "charge", pids[1])
        with pytest.raises(RuntimeError, match="a bug in charge"):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "n", 1) for pid in pids]))


def test_a_journal_outage_during_a_rollback_leaves_memory_and_journal_agreeing(tmp_path, monkeypatch):
    """A bug in a step while the journal cannot be written, a step waiting to be journaled: the rollback writes
    nothing, so it is made whole; the task's Failed cannot be journaled (degraded, the task runs on), the others'
    text is kept, and once the journal can be written again it replays to the live kernel."""
    with open_runtime(tmp_path) as rt:
        rt.journal.db = FailingDb(rt.journal.db)
        pids = started(rt, 3)
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "a", 1) for pid in pids]))  # waits to be journaled
        rt.journal.db.fault = full_error
        faulty(monkeypatch, "charge", pids[1], times=1)  # not again in the rebuild, which replays the step above
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "b", 1) for pid in pids]))
        assert rt.health.fault is not None
        assert [rt.kernel.tasks[pid].output for pid in pids] == [b"ab", b"a", b"ab"]
        assert rt.kernel.tasks[pids[1]].exit is None
        rt.journal.db.fault = None
        assert rt.health.recover(rt.kernel, rt.journal, rt.clock.now_us())
        monkeypatch.undo()
        assert replayed_difference(rt) == ""


def test_a_lone_surrogate_from_an_engine_is_served_as_a_replacement_character(tmp_path):
    """An OpenAI stream's `"\\ud800"` (JSON may escape a lone surrogate) becomes U+FFFD in its chunk: the step
    serves it with no bug and no rollback."""
    event = json.loads('{"choices": [{"index": 0, "text": "a\\ud800b"}]}')
    with open_runtime(tmp_path) as rt:
        [pid] = started(rt, 1)
        rt.deliver(Step(gpu=0, chunks=[sse.Tally(pid).chunk(event)]))
        assert rt.kernel.tasks[pid].output == "a\ufffdb".encode() and "kernel.step" not in rt.supervisor.bugs


@hypothesis.given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_a_chunks_text_is_utf8_with_each_surrogate_replaced_and_all_else_kept(text):
    """Any text, surrogates among CJK, emoji and ASCII, becomes a chunk's text that encodes to UTF-8, each code
    point kept but a surrogate, which is U+FFFD."""
    assert Chunk(1, text, 1).text.encode().decode() == "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def test_no_version_the_half_applied_step_had_comes_back(tmp_path, monkeypatch):
    """The render cache keys on the kernel's version: after a rollback (and the task's Failed) the versions are
    past the one the half-applied step had, though the rebuilt kernel applied fewer events."""
    with open_runtime(tmp_path) as rt:
        [pid] = started(rt, 1)
        faulty(monkeypatch, "metering", pid)
        failing, half = Tenancy.meter_serve, []

        def recording(self, task, tokens):
            half.append(rt.kernel.version)
            return failing(self, task, tokens)
        monkeypatch.setattr(Tenancy, "meter_serve", recording)
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "h", 1)]))
        assert rt.kernel.tasks[pid].exit.startswith("failed: kernel bug")
        assert rt.kernel.version > max(half) + 1  # the rollback's version, then the Failed's


def test_past_the_rollbacks_of_a_window_a_bugs_step_is_not_tried_again(tmp_path, monkeypatch):
    """A bug no one task's costs two rollbacks (the step is tried again); past ROLLBACKS in a window, a step's
    bug costs one: its tasks fail at once, and the Bug row says why."""
    steps = ROLLBACKS // 2 + 1
    with open_runtime(tmp_path) as rt:
        pids = started(rt, steps)
        for pid in pids:
            faulty(monkeypatch, "rekey", pid)
        for pid in pids:
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "r", 1)]))
        assert all(rt.kernel.tasks[pid].exit.startswith("failed: kernel bug") for pid in pids)
        bug = rt.supervisor.bugs["kernel.step"]
        assert bug.times == 2 * (steps - 1) + 1
        assert bug.outcome == f"its step's tasks failed (over {ROLLBACKS} rollbacks in {ROLLBACK_WINDOW_S:g} s)"


def unreadable_rows(journal):
    """Make `journal`'s rows unreadable, as a damaged file's are (journal.py `unreadable`)."""
    def rows(*_):
        raise Unreadable(f"cannot read the journal {journal.path}: database disk image is malformed")
        yield
    journal.rows = rows


def no_usable_start(rt):
    """Make the runtime's snapshots unable to start a kernel, as when rows were compacted behind a damaged one."""
    def start():
        raise CannotStart("no snapshot usable")
    rt.snapshotter.start = start


@pytest.mark.parametrize("fault", [lambda rt: unreadable_rows(rt.journal), no_usable_start],
                         ids=["journal unreadable", "no snapshot usable"])
def test_a_rollback_whose_rebuild_cannot_start_is_given_up(tmp_path, monkeypatch, caplog, fault):
    """A rebuild that cannot read the journal or start from a snapshot gives the rollback up: the bug raises as
    it came (the supervisor's to note), not the rebuild's error."""
    rt = daemon_like(tmp_path)
    try:
        pids = started(rt, 3)
        faulty(monkeypatch, "charge", pids[1])
        fault(rt)
        with pytest.raises(RuntimeError, match="a bug in charge"):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "n", 1) for pid in pids]))
        assert "rollback given up" in caplog.text
    finally:
        rt.close()


def test_an_unusable_snapshot_is_logged_once_across_rollbacks(tmp_path, monkeypatch, caplog):
    """The newest snapshot damaged, two rollbacks start from the one before it: why it is not used is logged
    once."""
    rt = daemon_like(tmp_path)
    try:
        pids = started(rt, 3)
        snapshot(rt)
        submit(rt, name="between")
        snapshot(rt)
        newest = max((tmp_path / "state" / "snapshots").iterdir())
        newest.write_bytes(newest.read_bytes()[:10])
        faulty(monkeypatch, "charge", pids[1])
        faulty(monkeypatch, "charge", pids[2])
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "n", 1) for pid in pids]))
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "m", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].exit is None for pid in pids] == [True, False, False]
        assert caplog.text.count("snapshot not used") == 1
    finally:
        rt.close()
