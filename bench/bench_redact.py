"""What hiding a URL's credentials costs (kernel/endpoints.py `redacted`), in process, at 1 KB, 10 KB and 80 KB.

Before: the pattern `redacted` was (copied here), quadratic on a long run of scheme characters (`"a." * 40000`:
each word start scanned the run to its end for a `://`). After: the hand scan, each `://` looked at once. Texts:
`runs` (`a.` repeated, then `http://u@h`), `scheme` (one scheme as long as the text, then `://host/@x`: no
credentials), `authority` (`http://` then `u@` repeated), `trace` (trace-like lines, one URL with credentials in
three). And `line`, one 60-byte reason with a URL, the common case. Both give the same text (checked).

Then what showing archived lines costs (archive.py `shown`, each URL's credentials hidden): `task_lines` of one
task (one in 7) in an archive of ARCHIVE_LINES trace-like lines (one in three with a password, one more with an
`@`; in gzipped files as the daemon leaves them), and every line of it passed through `shown` (`apeinxfs replay
STATE_DIR`'s older lines), against the same reads as they were, the lines as written; `task_lines` reading the
tenants of every task line too (to hide a removed tenant's name) against the read without them; and every line shown one
by one against all of them joined and shown at once (the same text), as `whole_trace` shows them. Rounds alternate; the
figure is the best of BENCH_ROUNDS of each, and the ratio before / after (above 1: after is faster). Figures only:
nothing is judged.
"""
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs import archive  # noqa: E402
from common import count_runs  # noqa: E402
from apeinxfs.kernel.endpoints import redacted  # noqa: E402
from apeinxfs.kernel.trace import HEADER  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZES = {"1 KB": 1 << 10, "10 KB": 10 << 10, "80 KB": 80 << 10}
MIN_S = 0.05  # each measure repeats the call for at least this long
OLD_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@(?![0-9+]+(?:[,\s]|$))")
TRACE_LINES = ('12,1733480000000000,interrupted,7,default,sim,0,"engine at http://bob:s3cret@10.0.0.1:8000 '
               'unreachable: timeout"\n', '13,1733480000100000,step,7,default,sim,0,"tokens=3"\n',
               '14,1733480000200000,exit,8,default,sim,0,"done; user@example.org"\n')
LINE = "engine at http://bob:s3cret@10.0.0.1:8000: HTTP 500"
ARCHIVE_LINES = int(os.environ.get("BENCH_ARCHIVE_LINES", "300000"))
ARCHIVE_FILE_BYTES = 4 << 20
ARCHIVED = [("interrupted", "engine at http://bob:s3cret@10.0.0.1:8000 unreachable: timeout"), ("step", "tokens=3"),
            ("exit", "done; user@example.org")]  # (type, detail) of the archive's lines in turn


def old_redacted(text: str) -> str:
    return OLD_USERINFO.sub(r"\1***@", text)


def texts(size: int) -> dict[str, str]:
    trace = "".join(TRACE_LINES)
    return {"runs": "a." * (size // 2 - 6) + " http://u@h", "scheme": "a.b" * (size // 3 - 4) + "://host/@x",
            "authority": "http://" + "u@" * (size // 2 - 4), "trace": trace * (size // len(trace))}


def seconds_a_call(call) -> float:
    """The seconds one `call()` takes, as a mean over calls repeated for MIN_S at least."""
    calls, elapsed = count_runs(call, MIN_S)
    return elapsed / calls


def compare(name: str, text: str) -> None:
    assert redacted(text) == old_redacted(text), f"{name}: the scan must give the pattern's text"
    alternate(name, lambda: old_redacted(text), lambda: redacted(text))


def alternate(name: str, before, after) -> None:
    """Print the best seconds a call of `before()` and of `after()` take, rounds alternating, and their ratio."""
    best = [float("inf")] * 2
    for _ in range(ROUNDS):
        best[0] = min(best[0], seconds_a_call(before))
        best[1] = min(best[1], seconds_a_call(after))
    print(f"  {name:<18} before {best[0] * 1e3:10.3f} ms  after {best[1] * 1e3:8.3f} ms  "
          f"ratio {best[0] / best[1]:9.3f}x")


def written_archive(directory: str) -> None:
    """ARCHIVE_LINES lines of 7 tasks in turn, in files of ARCHIVE_FILE_BYTES gzipped as the daemon leaves them."""
    ring = Lines()
    kept = archive.Archive(directory, ARCHIVE_FILE_BYTES)
    for seq in range(1, ARCHIVE_LINES + 1):
        kind, detail = ARCHIVED[seq % 3]
        ring.add(f'{seq},{seq * 1000},{kind},{seq % 7},default,sim,0,local,"{detail}"\n'.encode())
        if seq % 1000 == 0 or seq == ARCHIVE_LINES:
            kept.append(ring)
            ring.lines.clear()
    kept.close()
    kept.compress_full()


class Lines:
    """The lines an Archive appends (kernel/ring.py's `seq` and `lines_after`), in memory."""

    def __init__(self):
        self.seq, self.lines = 0, []

    def add(self, line: bytes) -> None:
        self.seq += 1
        self.lines.append(line)

    def lines_after(self, _seq: int) -> bytes:
        return b"".join(self.lines)


def task_lines_as_written(directory: str, pid: int) -> bytes:
    """archive.task_lines before `shown`: the lines as written."""
    prefix = re.compile(rb"^\d+,\d+,[^,]*,%d," % pid)
    return HEADER + b"".join(line for line in archive.lines(directory) if prefix.match(line))


def task_lines_without_tenants(directory: str, pid: int) -> bytes:
    """archive.task_lines before it also read the tenants of every task line (to hide a removed one's name)."""
    prefix = re.compile(rb"^\d+,\d+,[^,]*,%d," % pid)
    return HEADER + b"".join(archive.shown(line) for line in archive.lines(directory) if prefix.match(line))


def archive_reads() -> None:
    with tempfile.TemporaryDirectory() as directory:
        written_archive(directory)
        shown_lines = task_lines_as_written(directory, 0).replace(b"bob:s3cret@", b"***@")
        assert archive.task_lines(directory, 0)[0] == shown_lines == task_lines_without_tenants(directory, 0)
        print(f"archive of {ARCHIVE_LINES:,} lines: ms a read, before (as written) and after (shown), best of {ROUNDS}")
        alternate("task_lines(pid)", lambda: task_lines_as_written(directory, 0),
                  lambda: archive.task_lines(directory, 0))
        alternate("+ the tenants", lambda: task_lines_without_tenants(directory, 0),
                  lambda: archive.task_lines(directory, 0))
        alternate("every line", lambda: b"".join(archive.lines(directory)),
                  lambda: b"".join(map(archive.shown, archive.lines(directory))))
        print("every line shown: one by one (before) and joined, at once (after: whole_trace's older lines)")
        alternate("joined, at once", lambda: b"".join(map(archive.shown, archive.lines(directory))),
                  lambda: archive.shown(b"".join(archive.lines(directory))))


def main() -> None:
    print(f"redacted(text): ms a call, before (the pattern) and after (the scan), best of {ROUNDS}")
    compare("line (60 B)", LINE)
    for label, size in SIZES.items():
        for name, text in texts(size).items():
            compare(f"{name} {label}", text)
    archive_reads()


if __name__ == "__main__":
    main()
