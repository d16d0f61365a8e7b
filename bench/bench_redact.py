"""What hiding a URL's credentials costs (kernel/endpoints.py `redacted`), in process, at 1 KB, 10 KB and 80 KB.

Before: the pattern `redacted` was (copied here), quadratic on a long run of scheme characters (`"a." * 40000`:
each word start scanned the run to its end for a `://`). After: the hand scan, each `://` looked at once. Texts:
`runs` (`a.` repeated, then `http://u@h`), `scheme` (one scheme as long as the text, then `://host/@x`: no
credentials), `authority` (`http://` then `u@` repeated), `trace` (trace-like lines, one URL with credentials in three). And `line`, one 60-byte reason
with a URL, the common case. Both give the same text (checked). Rounds alternate; the figure is the best of
BENCH_ROUNDS of each, and the ratio before / after (above 1: after is faster). Figures only: nothing is judged.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs.kernel.endpoints import redacted  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZES = {"1 KB": 1 << 10, "10 KB": 10 << 10, "80 KB": 80 << 10}
MIN_S = 0.05  # each measure repeats the call for at least this long
OLD_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@(?![0-9+]+(?:[,\s]|$))")
TRACE_LINES = ('12,1733480000000000,interrupted,7,default,sim,0,"engine at http://bob:s3cret@10.0.0.1:8000 '
               'unreachable: timeout"\n', '13,1733480000100000,step,7,default,sim,0,"tokens=3"\n',
               '14,1733480000200000,exit,8,default,sim,0,"done; user@example.org"\n')
LINE = "engine at http://bob:s3cret@10.0.0.1:8000: HTTP 500"


def old_redacted(text: str) -> str:
    return OLD_USERINFO.sub(r"\1***@", text)


def texts(size: int) -> dict[str, str]:
    trace = "".join(TRACE_LINES)
    return {"runs": "a." * (size // 2 - 6) + " http://u@h", "scheme": "a.b" * (size // 3 - 4) + "://host/@x",
            "authority": "http://" + "u@" * (size // 2 - 4), "trace": trace * (size // len(trace))}


def seconds_a_call(redact, text: str) -> float:
    """The seconds one call of `redact(text)` takes, as a mean over calls repeated for MIN_S at least."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < MIN_S:
        redact(text)
        calls += 1
    return elapsed / calls


def compare(name: str, text: str) -> None:
    assert redacted(text) == old_redacted(text), f"{name}: the scan must give the pattern's text"
    best = [float("inf")] * 2
    for _ in range(ROUNDS):  # alternating
        best[0] = min(best[0], seconds_a_call(old_redacted, text))
        best[1] = min(best[1], seconds_a_call(redacted, text))
    print(f"  {name:<18} before {best[0] * 1e3:10.3f} ms  after {best[1] * 1e3:8.3f} ms  "
          f"ratio {best[0] / best[1]:9.1f}x")


def main() -> None:
    print(f"redacted(text): ms a call, before (the pattern) and after (the scan), best of {ROUNDS}")
    compare("line (60 B)", LINE)
    for label, size in SIZES.items():
        for name, text in texts(size).items():
            compare(f"{name} {label}", text)


if __name__ == "__main__":
    main()
