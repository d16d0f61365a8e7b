"""Tier 1: `apeinxfs sim` (simulate.py, sim/): workload files, runs on the virtual clock, reports.

No FUSE: the simulator runs the kernel, Runtime and sim driver in-process on the virtual
clock of its event loop (sim/loop.py). `simulate_report` and `shares` are meant for the
fairness tests of the policies too (they compare the shares of service between tenants).
"""
import contextlib
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from apeinxfs import config as config_mod
from apeinxfs import simulate
from apeinxfs.journal import Journal
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.kvmem import _TOKEN, estimate_prompt_tokens
from apeinxfs.sim import engine, fairness, workload
from apeinxfs.kernel.spec import PROMPT_MAX
from apeinxfs.sim.report import percentile, shares

WORKLOADS = Path(__file__).resolve().parent.parent / "examples" / "workloads"
HEADER = "arrival_s,tenant,name,prompt_tokens,output_tokens,prio,deadline_s,parent,weight\n"
REPORT_KEYS = {"tenants", "throughput_tokens_s", "preemptions", "evictions", "oom_kills", "service_gap",
               "windowed_unfairness"}
TENANT_KEYS = {"requests", "completed", "tokens_in", "tokens_out", "service", "ttft_mean_s", "ttft_p99_s",
               "latency_mean_s"}
SMALL = HEADER + """0,a,a1,20,10,,,,
0,b,b1,30,12,7,,,300
0.2,a,a2,10,5,,,,
1.5,,lonely,,3,,,,
"""


def simulate_report(path, *flags) -> dict:
    """Run `apeinxfs sim PATH FLAGS --report json` in-process and return the parsed report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert simulate.main([str(path), *map(str, flags), "--report", "json"]) == 0
    return json.loads(out.getvalue())


def parse(text: str) -> workload.Workload:
    return workload.parse(io.StringIO(text), "w.csv")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "w.csv"
    path.write_text(text)
    return path


# -- workload files -------------------------------------------------------------------


def test_empty_cells_take_defaults():
    """Empty cells mean arrival 0, tenant default, a name from the line, prio 5, 256 output tokens."""
    request, = parse(HEADER + ",,,,,,,,\n").requests
    assert (request.arrival_s, request.spec.tenant, request.spec.name) == (0.0, "default", "task-2")
    assert (request.spec.prio, request.spec.max_tokens, request.prompt_tokens) == (5, 256, 1)
    assert request.spec.deadline_us is None and request.parent is None


def test_rows_are_submitted_in_arrival_order():
    """Requests are sorted by arrival time, ties kept in file order."""
    names = [r.spec.name for r in parse(HEADER + "2,,x,5,5,,,,\n1,,y,5,5,,,,\n1,,z,5,5,,,,\n").requests]
    assert names == ["y", "z", "x"]


def test_weight_on_any_row_sets_the_tenant_weight():
    """A weight cell sets its tenant's weight; tenants without one get 100."""
    weights = parse(HEADER + "0,a,a1,5,5,,,,\n1,a,a2,5,5,,,,250\n0,b,b1,5,5,,,,\n").weights
    assert weights == {"a": 250, "b": 100}


def test_parent_names_an_earlier_row_and_gives_its_tenant():
    """`parent` is the name of an earlier row; the child takes the parent's tenant."""
    requests = parse(HEADER + "0,team,boss,5,50,,,,\n1,,helper,5,5,,,boss,\n").requests
    assert requests[1].parent == "boss" and requests[1].spec.tenant == "team"


@pytest.mark.parametrize("row, words", [
    ("x,,a,5,5,,,,", "arrival_s must be a number"),
    ("-1,,a,5,5,,,,", "arrival_s must be a finite number >= 0"),
    ("1e300,,a,5,5,,,,", "arrival_s must be at most 2,592,000 s, not 1e300"),
    ("2592000.5,,a,5,5,,,,", "arrival_s must be at most 2,592,000 s"),
    ("0,,a,0,5,,,,", "prompt_tokens must be at least 1"),
    ("0,,a,524290,5,,,,", "prompt_tokens must be at most 524289"),
    ("0,,a,5,many,,,,", "output_tokens must be an integer"),
    ("0,,a,5,5,12,,,", "prio must be an integer in 0..9"),
    ("0,,a b,5,5,,,,", "may not hold spaces"),
    ("0,,a,5,5,,,nobody,", "parent 'nobody' is not the name of an earlier row"),
    ("0,,a,5,5,,,,0", "weight must be an integer in 1..10000"),
    ("0,,a,5,5,,,,,", "expected 9 cells"),
    ("0,,a,5,5,,,", "expected 9 cells"),
    ("0,,first,5,5,,,,", "'first' is already used on line 2"),
    ("0,t,a,5,5,,,,200", "contradicts the earlier 100"),
])
def test_a_bad_row_is_refused_naming_its_line(row, words):
    """A bad cell is refused with an error that names line 3 and the problem."""
    with pytest.raises(Invalid) as refused:
        parse(HEADER + "0,t,first,5,5,,,,100\n" + row + "\n")
    assert "w.csv line 3:" in str(refused.value) and words in str(refused.value)


@pytest.mark.parametrize("cell, words", [(b"x" * 200_000, b"field larger than field limit"),
                                         (b"caf\xe9", b"not UTF-8 text (byte 0xe9 at column 8)"),
                                         (b"x" * workload.LINE_MAX,
                                          f"longer than {workload.LINE_MAX:,} characters".encode())])
def test_an_unreadable_line_is_refused_naming_it(tmp_path, cell, words):
    """A cell over csv's field limit, a line that is not UTF-8, or one over LINE_MAX characters (refused before
    it is read whole), is refused naming line 3 of the file."""
    path = tmp_path / "w.csv"
    path.write_bytes(HEADER.encode() + b"0,t,first,5,5,,,,\n0,t," + cell + b",5,5,,,,\n")
    with pytest.raises(Invalid) as refused:
        workload.load(str(path))
    assert f"workload {path} line 3: {words.decode()}" in str(refused.value)


def test_a_workload_starting_with_a_byte_order_mark_loads(tmp_path):
    """A file that starts with a UTF-8 byte order mark (as some spreadsheets save CSV) reads as one without."""
    path = tmp_path / "w.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "0,t,a,5,5,,,,\n").encode())
    assert [request.spec.name for request in workload.load(str(path)).requests] == ["a"]


def test_a_workload_with_carriage_return_line_ends_loads(tmp_path):
    """A file whose lines end in CR alone (or CR LF) reads as one with LF line ends."""
    for end in ("\r", "\r\n"):
        path = tmp_path / "w.csv"
        path.write_bytes((HEADER + "0,t,a,5,5,,,,\n0,t,b,5,5,,,,\n").replace("\n", end).encode())
        assert [request.spec.name for request in workload.load(str(path)).requests] == ["a", "b"]


def test_the_largest_prompt_a_submit_holds_is_parsed_and_fits():
    """A row of exactly PROMPT_TOKENS_MAX tokens is taken, and its prompt has that many tokens within 1 MiB."""
    request = parse(HEADER + f"0,,big,{workload.PROMPT_TOKENS_MAX},5,,,,\n").requests[0]
    text = workload.prompt(request, {})
    assert estimate_prompt_tokens(text) == workload.PROMPT_TOKENS_MAX and len(text.encode()) <= PROMPT_MAX


def test_a_child_may_not_arrive_before_or_leave_its_parent_tenant():
    """A child arriving before its parent, or naming another tenant, is refused with its line."""
    with pytest.raises(Invalid, match="line 3: arrives before its parent"):
        parse(HEADER + "5,t,boss,5,5,,,,\n1,,kid,5,5,,,boss,\n")
    with pytest.raises(Invalid, match="line 3: tenant 'u' differs from its parent's"):
        parse(HEADER + "0,t,boss,5,5,,,,\n1,u,kid,5,5,,,boss,\n")


def test_bad_headers_name_the_column():
    """A missing or unknown column, or an empty file, is refused before any row is read."""
    with pytest.raises(Invalid, match="missing column weight"):
        parse(HEADER.replace(",weight", "") + "0,,a,5,5,,,\n")
    with pytest.raises(Invalid, match="unknown column 'colour'"):
        parse(HEADER.strip() + ",colour\n")
    with pytest.raises(Invalid, match="empty file"):
        parse("")
    with pytest.raises(Invalid, match="no requests"):
        parse(HEADER)


def test_prompts_have_the_asked_number_of_tokens():
    """A synthetic prompt counts exactly prompt_tokens by the kernel's estimate, and fits a submit even at 131,072."""
    groups = {}
    for request in parse(HEADER + "".join(f"0,,r{n},{n},5,,,,\n" for n in (1, 2, 17, 500, 131072))).requests:
        text = workload.prompt(request, groups)
        assert estimate_prompt_tokens(text) == request.prompt_tokens and len(text.encode()) <= PROMPT_MAX


def test_a_prefix_group_shares_exactly_its_prefix():
    """Rows of one prefix group share their first prefix_tokens tokens and no more; others share none."""
    text = HEADER.strip() + ",prefix_group,prefix_tokens\n"
    text += "0,,a,40,5,,,,,sys,25\n0,,b,30,5,,,,,sys,25\n0,,c,40,5,,,,,other,25\n"
    groups, requests = {}, parse(text).requests
    a, b, c = (["<bos>"] + _TOKEN.findall(workload.prompt(r, groups)) for r in requests)
    assert a[:25] == b[:25] and a[25] != b[25]
    assert a[1] != c[1]


def test_prefix_columns_are_checked():
    """prefix_tokens needs a group, and may not exceed prompt_tokens."""
    text = HEADER.strip() + ",prefix_group,prefix_tokens\n"
    with pytest.raises(Invalid, match="line 2: prefix_tokens \\(50\\) exceeds prompt_tokens \\(40\\)"):
        parse(text + "0,,a,40,5,,,,,sys,50\n")
    with pytest.raises(Invalid, match="line 2: prefix_group and a positive prefix_tokens go together"):
        parse(text + "0,,a,40,5,,,,,,10\n")


def test_example_workloads_parse():
    """Every shipped workload parses and has requests."""
    paths = sorted(WORKLOADS.glob("*.csv"))
    assert len(paths) >= 6
    for path in paths:
        assert workload.load(str(path)).requests, path


# -- runs and reports -----------------------------------------------------------------------


def test_small_run_reports_every_field_and_serves_everything(tmp_path):
    """A run to the end completes every request and serves exactly the asked tokens."""
    report = simulate_report(write(tmp_path, SMALL), "--gpus", 1)
    assert REPORT_KEYS <= set(report) and report["throughput_tokens_s"] > 0
    tenants = report["tenants"]
    assert set(tenants) == {"a", "b", "default"}
    for name, t in tenants.items():
        assert TENANT_KEYS <= set(t)
        assert t["completed"] == t["requests"] > 0, name
        assert t["ttft_mean_s"] > 0 and t["ttft_p99_s"] >= t["ttft_mean_s"] and t["latency_mean_s"] > 0
    assert (tenants["a"]["tokens_out"], tenants["b"]["tokens_out"], tenants["default"]["tokens_out"]) == (15, 12, 3)
    assert (tenants["a"]["tokens_in"], tenants["b"]["tokens_in"], tenants["default"]["tokens_in"]) == (30, 30, 1)
    assert tenants["b"]["weight"] == 300 and tenants["a"]["service"] == 30 + 2 * 15


def test_runs_are_repeatable(tmp_path):
    """Two runs of one workload give the same report, wall time aside."""
    path = WORKLOADS / "stress-100.csv"
    first, second = (simulate_report(path, "--gpus", 2) for _ in range(2))
    for report in (first, second):
        del report["wall_seconds"], report["speed"]
    assert first == second and first["completed"] == 100


def ttfts(trace_path: Path) -> dict[str, int]:
    with open(trace_path) as file:
        return {r["pid"]: int(r["detail"].split("=")[1]) for r in csv.DictReader(file) if r["type"] == "first_token"}


def test_a_request_arriving_as_a_step_ends_is_in_the_next_step(tmp_path):
    """At one instant the arrival is submitted before the step is delivered, so the GPU's next step serves it."""
    path, trace = write(tmp_path, HEADER + "0,a,x,1,3,,,,\n0.020125,a,y,1,2,,,,\n"), tmp_path / "trace.csv"
    for gpus, ttft_y in ((1, 20625), (2, 20125)):  # a step: 20 ms, + 0.5 ms a second sequence, + 125 µs a prefill
        simulate_report(path, "--gpus", gpus, "--trace", trace)
        with open(trace) as file:
            rows = [(r["time_us"], r["type"], r["pid"]) for r in csv.DictReader(file)]
        assert rows[2:5] == [("20125", "submit", "2"), ("20125", "dispatch", "2"), ("20125", "first_token", "1")]
        assert ttfts(trace)["2"] == ttft_y, gpus


def test_until_counts_only_what_was_served_by_then(tmp_path):
    """--until stops the clock: service shrinks, and tokens of tasks still running count."""
    path = write(tmp_path, HEADER + "0,a,long,10,400,,,,\n0,a,short,10,5,,,,\n")
    whole, cut = simulate_report(path, "--gpus", 1), simulate_report(path, "--gpus", 1, "--until", 2)
    assert cut["sim_seconds"] == 2 and whole["sim_seconds"] > 8
    a = cut["tenants"]["a"]
    assert a["completed"] == 1 and a["requests"] == 2
    assert 5 < a["tokens_out"] < 405 and a["service"] < whole["tenants"]["a"]["service"]


def test_fcfs_gives_the_heavier_sender_two_thirds(tmp_path):
    """On the 2x overload, FCFS serves in arrival order: shares about 0.33/0.67 (the fair policies' baseline)."""
    report = simulate_report(WORKLOADS / "overload.csv", "--gpus", 1, "--policy", "fcfs", "--until", 60)
    share = shares(report)
    assert share["a"] == pytest.approx(2 / 3, abs=0.03) and share["b"] == pytest.approx(1 / 3, abs=0.03)
    assert report["windowed_unfairness"] > 200


def test_shared_prefix_hits_match_the_shared_blocks():
    """shared-prefix.csv: 3 groups x 15 requests share 12 of their 15 cacheable blocks, 15 requests share none.

    Hits: 3 groups x 14 later requests x 12 blocks = 504; misses: 3 x (15 + 14 x 3) + 15 x 15 = 396.
    """
    report = simulate_report(WORKLOADS / "shared-prefix.csv", "--gpus", 1)
    assert (report["prefix_hits"], report["prefix_misses"]) == (504, 396)
    assert report["prefix_hit_rate"] == pytest.approx(504 / 900)


def test_refused_requests_are_counted_and_journaled(tmp_path):
    """A request that can never fit is refused (as /ctl/submit would) and so is its child."""
    path = write(tmp_path, HEADER + "0,a,huge,5000,5000,,,,\n1,,kid,5,5,,,huge,\n2,a,ok,5,5,,,,\n")
    report = simulate_report(path, "--gpus", 1, "--kv-tokens", 1024, "--trace", tmp_path / "trace.csv")
    assert report["tenants"]["a"]["rejected"] == 2 and report["tenants"]["a"]["completed"] == 1
    rejects = [row for row in csv.DictReader(open(tmp_path / "trace.csv")) if row["type"] == "reject"]
    assert len(rejects) == 2 and "parent 'huge' was refused" in rejects[1]["detail"]


def test_state_dir_journal_replays_to_the_same_trace(tmp_path):
    """--state-dir keeps a journal and config.toml that rebuild the run's kernel and its very trace."""
    state, trace = tmp_path / "state", tmp_path / "trace.csv"
    simulate_report(write(tmp_path, SMALL), "--gpus", 2, "--state-dir", state, "--trace", trace)
    config = config_mod.load(str(state / "config.toml"), str(state), use_nvml=False)
    kernel, journal = Kernel(config.kernel), Journal(str(state / "journal.db"))
    try:
        for _seq, time_us, event in journal.replay():
            kernel.apply(event, time_us)
    finally:
        journal.close()
    assert bytes(kernel.trace.buffer) == trace.read_bytes() and trace.read_bytes().count(b",exit,") == 4
    assert [g.slots for g in config.kernel.gpus] == [8, 8]


def test_state_dir_with_a_journal_is_refused(tmp_path, capsys):
    """A state directory that already holds a journal is refused, not appended to."""
    path = write(tmp_path, SMALL)
    simulate_report(path, "--state-dir", tmp_path / "state")
    assert simulate.main([str(path), "--state-dir", str(tmp_path / "state")]) == 1
    assert "already holds a journal" in capsys.readouterr().err


def test_kv_pool_and_pages_follow_the_options(tmp_path):
    """--kv-tokens and --page-tokens size the pool; a page that is not whole MiB is refused."""
    report = simulate_report(write(tmp_path, SMALL), "--kv-tokens", 4096, "--page-tokens", 32, "--slots", 2)
    assert (report["kv_tokens"], report["page_tokens"], report["slots"]) == (4096, 32, 2)
    assert simulate.main([str(tmp_path / "w.csv"), "--page-tokens", "12"]) == 1


def test_command_line_errors_name_the_line(tmp_path, capsys):
    """A bad workload exits 1 with the file and line on stderr; nothing on stdout."""
    assert simulate.main([str(write(tmp_path, HEADER + "0,,a,5,5,,,,\nsoon,,b,5,5,,,,\n"))]) == 1
    captured = capsys.readouterr()
    assert "w.csv line 3: arrival_s must be a number" in captured.err and captured.out == ""
    assert simulate.main([str(tmp_path / "missing.csv")]) == 1
    assert simulate.main([str(tmp_path / "w.csv"), "--gpus", "0"]) == 1
    assert "--gpus must be at least 1" in capsys.readouterr().err


def test_a_run_where_nothing_moves_stops_with_an_error(tmp_path, capsys, monkeypatch):
    """If no GPU ever has a batch to step, the run stops after the last arrival instead of hanging."""
    monkeypatch.setattr(Kernel, "batch", lambda self, gpu: [])
    assert simulate.main([str(write(tmp_path, SMALL))]) == 1
    assert "simulation stalled at 1.5 s: 4 tasks are left" in capsys.readouterr().err


def test_table_shows_tenants_and_speed(tmp_path, capsys):
    """The default output is a table with a row per tenant and the simulated-per-wall-second speed."""
    assert simulate.main([str(write(tmp_path, SMALL)), "--gpus", "1"]) == 0
    text = capsys.readouterr().out
    assert "(simulated seconds per wall second)" in text
    assert [line.split()[0] for line in text.splitlines() if line.split()[:1] in (["a"], ["b"], ["default"])] \
        == ["a", "b", "default"]


# -- fairness numbers --------------------------------------------------------------------------


def meter_with(tokens_per_s: dict, waiting: dict, seconds: int = 4) -> fairness.ServiceMeter:
    """A finished meter of 1 s intervals, shown one task per tenant once a second: `tokens_per_s[t]`
    output tokens (service 2 each) per second, queued all along if `waiting[t]`."""
    meter = fairness.ServiceMeter(sorted(tokens_per_s), 1, 2, window_s=fairness.SAMPLES_PER_WINDOW)
    tasks = [SimpleNamespace(pid=pid, tenant=t, tokens_in=0, tokens_out=0, first_token_us=0, runnable=waiting[t])
             for pid, t in enumerate(meter.tenants)]
    for second in range(seconds + 1):
        for task in tasks:
            task.tokens_out = tokens_per_s[task.tenant] * second
        meter.observe(second * 1_000_000, tasks)
    meter.finish(seconds * 1_000_000)
    return meter


def test_unfairness_is_the_service_difference_while_both_are_backlogged():
    """Backlogged all along, 30/s against 10/s: gap 20 per second summed, unfairness 20/s."""
    meter = meter_with({"a": 15, "b": 5}, {"a": True, "b": True})
    result = fairness.fairness(meter, {"a": 100, "b": 100})
    assert result["service_gap"] == pytest.approx(80) and result["windowed_unfairness"] == pytest.approx(20)


def test_a_tenant_that_is_not_backlogged_is_not_short_changed():
    """A tenant with nothing waiting gets less without counting as unfairness."""
    meter = meter_with({"a": 15, "b": 5}, {"a": True, "b": False})
    result = fairness.fairness(meter, {"a": 100, "b": 100})
    assert result["service_gap"] == 0 and result["windowed_unfairness"] == 0


def test_unfairness_is_measured_per_unit_of_weight():
    """Service in proportion to weight (3:1 for weights 300:100) is perfectly fair."""
    meter = meter_with({"a": 15, "b": 5}, {"a": True, "b": True})
    result = fairness.fairness(meter, {"a": 300, "b": 100})
    assert result["service_gap"] == pytest.approx(0) and result["windowed_unfairness"] == pytest.approx(0)


def test_prompt_tokens_count_once_when_first_prefilled():
    """A task's prompt is served (input_cost per token) the first time it has a first token, not again."""
    meter = fairness.ServiceMeter(["a"], 1, 2, window_s=60)
    task = SimpleNamespace(pid=1, tenant="a", tokens_in=100, tokens_out=0, first_token_us=None, runnable=True)
    meter.observe(0, [task])
    task.first_token_us, task.tokens_out, task.runnable = 10, 1, False
    meter.observe(10, [task])
    task.tokens_out = 2
    meter.observe(20, [task])
    assert meter.totals == [100 + 2 * 2] and meter.spans == [[[0, 10]]]


def test_shares_and_percentile():
    """shares() divides each tenant's service by the total; percentile() is nearest-rank."""
    assert shares({"tenants": {"a": {"service": 30.0}, "b": {"service": 10.0}}}) == {"a": 0.75, "b": 0.25}
    assert shares({"tenants": {"a": {"service": 0.0}}}) == {"a": 0.0}
    assert percentile(list(range(1, 101)), 99) == 99 and percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_every_refused_request_leaves_its_reject_line(tmp_path):
    """The simulator's refusals (uid 0) are not rate-limited: 25 refused requests, past a daemon's burst of 20,
    leave 25 reject lines."""
    rows = "".join(f"{index},a,huge{index},5000,5000,,,,\n" for index in range(25))
    path = write(tmp_path, HEADER + rows)
    report = simulate_report(path, "--gpus", 1, "--kv-tokens", 1024, "--trace", tmp_path / "trace.csv")
    rejects = [row for row in csv.DictReader(open(tmp_path / "trace.csv")) if row["type"] == "reject"]
    assert report["tenants"]["a"]["rejected"] == len(rejects) == 25
