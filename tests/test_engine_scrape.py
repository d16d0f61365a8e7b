"""Tier 2: the openai driver scrapes its engine's metrics into the Runtime, and the tree shows them.

`MetricsServer` is a few-line HTTP server on 127.0.0.1 that answers GET with fixed bodies
(the samples of tests/data); the driver's `observe` runs on trio's real clock. The same
against a real llama-server through a mount is in test_engine_daemon.py.
"""
import contextlib
from pathlib import Path

import httpx
import pytest
import trio

from apeinxfs.drivers import metrics, scrape
from apeinxfs.drivers.openai import OpenAIDriver
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime
from test_nodes import text
from test_openai_driver import engine_config

DATA = Path(__file__).resolve().parent / "data"


class MetricsServer:
    """Answers `GET PATH` with `pages[PATH]` (200) or 404; counts the requests per path."""

    def __init__(self, pages: dict):
        self.pages, self.hits, self.port = pages, {}, None

    async def start(self, nursery) -> "MetricsServer":
        listeners = await nursery.start(trio.serve_tcp, self.handle, 0)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        path = request.split(b" ")[1].decode()
        self.hits[path] = self.hits.get(path, 0) + 1
        body = self.pages.get(path, "").encode()
        status = "200 OK" if path in self.pages else "404 Not Found"
        with contextlib.suppress(trio.BrokenResourceError):  # a scrape that stops reading a body over BODY_MAX
            await stream.send_all(f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                                  .encode() + body)


BIG_GPU = "slots = 4\nmemory_mib = 40960\nkv_mib = 32768\n"  # its KV cache holds the samples' 240000 tokens


async def observed(tmp_path, server: MetricsServer, want_scrapes: int = 2, gpu: str = BIG_GPU) -> dict:
    """Run the openai driver's scraper on `server` until it has scraped `want_scrapes` times; the tree's files.
    `gpu`: the [gpus] keys (a report beyond its KV cache counts it full and says so, kernel/kvreport.py)."""
    config = engine_config(server.port, metrics_s=0.02).replace("slots = 4\n", gpu)
    with open_runtime(tmp_path, config) as rt:
        driver = OpenAIDriver(rt.kernel.models)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.observe, rt)
            with trio.fail_after(10):
                while server.hits.get("/metrics", 0) < want_scrapes:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        tree = Tree(rt)
        return {path: text(tree, path) for path in ("/models/tiny/engine", "/memory/meminfo", "/metrics",
                                                   "/memory/gpu0/pool")}


def flat(content: str) -> dict:
    return dict(line.split(" ", 1) for line in content.splitlines())


def meminfo(content: str) -> dict:
    return {line.split(":")[0]: line.split()[1] for line in content.splitlines()}


async def test_vllm_metrics_reach_the_models_engine_file_and_meminfo(tmp_path, nursery):
    """A vLLM engine's KV usage, tokens and queues appear in /models/NAME/engine, meminfo's Engine keys and /metrics."""
    server = await MetricsServer({"/metrics": (DATA / "vllm-metrics.txt").read_text()}).start(nursery)
    files = await observed(tmp_path, server)
    engine = flat(files["/models/tiny/engine"])
    assert engine["source"] == f"http://127.0.0.1:{server.port}/metrics" and engine["engine"] == "vllm"
    assert (engine["kv_usage_pct"], engine["kv_tokens"], engine["kv_capacity_tokens"]) == ("37.50", "240000", "640000")
    assert (engine["requests_running"], engine["requests_waiting"], engine["error"]) == ("21", "3", "-")
    assert 0 <= float(engine["scraped_age_s"]) < 5
    info = meminfo(files["/memory/meminfo"])
    assert (info["EngineKVUsage"], info["EngineKVTokens"], info["EngineKVLimit"]) == ("38", "240000", "640000")
    assert (info["EngineRunning"], info["EngineWaiting"], info["Engines"]) == ("21", "3", "1")
    exposition = files["/metrics"].splitlines()
    assert 'apeinx_engine_kv_usage_ratio{model="tiny"} 0.375' in exposition
    assert 'apeinx_engine_requests{model="tiny",state="waiting"} 3' in exposition


async def test_an_engine_reporting_more_kv_than_its_gpu_holds_counts_it_full_and_says_so(tmp_path, nursery):
    """vLLM's 240000 tokens on a GPU whose KV cache holds fewer: its pool is counted full, the engine file's error
    says so, and the engine's own figures are shown as it gave them."""
    server = await MetricsServer({"/metrics": (DATA / "vllm-metrics.txt").read_text()}).start(nursery)
    files = await observed(tmp_path, server, gpu="slots = 4\n")
    engine = flat(files["/models/tiny/engine"])
    assert engine["error"].startswith("its KV report of 240000 tokens takes ") and engine["error"].endswith(
        " its GPUs hold here: counted as full") and engine["kv_tokens"] == "240000"
    pool = flat(files["/memory/gpu0/pool"])
    assert pool["engine_pages"] == pool["unbooked_pages"] == pool["pages_total"] and int(pool["pages_total"]) > 0


async def test_llamacpp_without_kv_gauge_is_completed_from_slots(tmp_path, nursery):
    """llama-server's /metrics has no KV gauge, so the scraper also reads /slots for it."""
    pages = {"/metrics": (DATA / "llamacpp-metrics.txt").read_text(),
             "/slots": (DATA / "llamacpp-slots.json").read_text()}
    server = await MetricsServer(pages).start(nursery)
    engine = flat((await observed(tmp_path, server))["/models/tiny/engine"])
    assert (engine["engine"], engine["kv_tokens"], engine["kv_capacity_tokens"]) == ("llamacpp", "1682", "16384")
    assert server.hits["/slots"] >= 1


async def test_an_oversized_slots_leaves_no_slot_figures_but_the_metrics_ones(tmp_path, nursery):
    """A /slots over BODY_MAX (slots debug: every slot's text) leaves no KV figures, noted, and the queues of /metrics."""
    pages = {"/metrics": (DATA / "llamacpp-metrics.txt").read_text(), "/slots": "[" + " " * scrape.BODY_MAX + "]"}
    server = await MetricsServer(pages).start(nursery)
    engine = flat((await observed(tmp_path, server))["/models/tiny/engine"])
    assert (engine["engine"], engine["kv_tokens"], engine["requests_running"]) == ("llamacpp", "-", "3")
    assert engine["error"] == f"no slot figures: the body is over {scrape.BODY_MAX} bytes"


async def test_an_engine_without_metrics_says_why(tmp_path, nursery):
    """A 404 on /metrics shows as the engine file's error, with no numbers, and adds nothing to meminfo."""
    server = await MetricsServer({}).start(nursery)
    files = await observed(tmp_path, server)
    engine = flat(files["/models/tiny/engine"])
    assert engine["error"].startswith("Client error '404 Not Found'") and engine["kv_tokens"] == "-"
    assert meminfo(files["/memory/meminfo"])["Engines"] == "0"


def test_a_sim_model_has_no_engine_metrics(tmp_path):
    """The sim driver reads no engine: its engine file says `source none`, meminfo's Engine keys are 0."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        assert text(tree, "/models/sim/engine") == "source none\n"
        assert meminfo(text(tree, "/memory/meminfo"))["EngineKVUsage"] == "0"


async def test_metrics_parsed_in_slices_are_the_whole_texts_samples_and_line_numbers():
    """scrape.parsed, a slice of about PARSE_CHARS at a time, gives metrics.parse's samples, and names a bad line by its number."""
    good = "".join(f'vllm:num_requests_running{{engine="{i}"}} {i}\r\n' for i in range(2 * scrape.PARSE_CHARS // 30))
    assert await scrape.parsed(good) == metrics.parse(good)
    bad = good + "not a sample\n"
    with pytest.raises(metrics.Unreadable, match=f"line {2 * scrape.PARSE_CHARS // 30 + 1} "):
        await scrape.parsed(bad)
    samples = metrics.parse(good)
    assert metrics.reading_of(await scrape.gathered(samples)) == metrics.reading_of(metrics.Gauges(samples))


async def ticks_while(work) -> int:
    """How many times another task ran while `work` (an awaitable) ran: once for each checkpoint it passed."""
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.lowlevel.checkpoint()  # tick runs once before the work starts
        ticks = 0
        await work
        nursery.cancel_scope.cancel()
    return ticks


async def test_a_megabyte_of_label_heavy_metrics_is_parsed_with_other_tasks_running_between_slices():
    """1 MiB of lines of many labels (under 2000 lines) is parsed in slices of characters, not lines: other tasks run 10 times or more."""
    line = "vllm:x{" + ",".join(f'l{i}="v"' for i in range(100)) + "} 1\n"
    text = line * (scrape.BODY_MAX // len(line))
    assert len(text.splitlines()) < 2000 and await ticks_while(scrape.parsed(text)) >= 10


async def test_a_hundred_thousand_samples_are_gathered_with_other_tasks_running_between_slices():
    """116k samples (a 1 MiB body of short lines) are gathered into gauges in slices: other tasks run 10 times or more."""
    samples = metrics.parse("".join(f"a{{e=\"{i}\"}} 1\n" for i in range(116_000)))
    assert await ticks_while(scrape.gathered(samples)) >= 10


def test_one_line_escapes_what_is_not_printable_and_the_backslash():
    """An engine's literal backslash-n and its real line end stay apart on one line: the backslash is escaped too."""
    assert scrape.one_line("a\\nb\nc\td\x1b") == "a\\\\nb\\nc\\td\\x1b"


class Body(httpx.AsyncByteStream):
    """A response body sent as it comes off the wire (one piece), not already read."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self):
        yield self.data


VLLM_BLOCKS = 'vllm:cache_config_info{num_gpu_blocks="100",block_size="16"} 1\n'


async def scraped(metrics_text: str, slots: str = "[]") -> tuple[metrics.Observation, str]:
    """One scrape.scrape of an engine (an httpx transport fake) whose /metrics is `metrics_text`, /slots `slots`."""
    def answer(request):
        return httpx.Response(200, stream=Body((metrics_text if request.url.path == "/metrics" else slots).encode()))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        return await scrape.scrape(client, "http://engine:8000", timeout_s=5.0)


@pytest.mark.parametrize("metrics_text, slots, error, figures", [
    (VLLM_BLOCKS + "vllm:kv_cache_usage_perc 1e308\n", "[]", "its KV cache usage of 1e+308 is not a fraction 0 to 1",
     None),
    (VLLM_BLOCKS + 'vllm:kv_cache_usage_perc 0.5\nvllm:num_requests_running{engine="0"} 1e308\n'
     'vllm:num_requests_running{engine="1"} 1e308\n', "[]", None, (800, 1600, metrics.FIGURE_MAX)),
    ("llamacpp:kv_cache_usage_ratio 1e-320\nllamacpp:kv_cache_tokens 1e300\n", "[]", None,
     (metrics.FIGURE_MAX, metrics.FIGURE_MAX, None)),
    ("llamacpp:requests_processing 1\n", '[{"n_ctx": 1e999, "n_prompt_tokens": 5, "is_processing": true}]', None,
     (5, metrics.FIGURE_MAX, 1)),
    ("sglang:token_usage 0.5\nsglang:max_total_num_tokens -5\n", "[]", "its KV cache capacity of -5 tokens is negative",
     None),
], ids=["vllm-usage-1e308", "vllm-requests-1e308", "llamacpp-usage-1e-320", "slots-n_ctx-1e999",
        "sglang-capacity-negative"])
async def test_figures_an_engine_sends_too_large_are_bounded_or_its_scrape_error(metrics_text, slots, error, figures):
    """Figures of 1e308, 1e999, a quotient by 1e-320 or a negative capacity never raise out of a scrape: bounded, or
    its error (a negative capacity would divide by 0 where endpoints' readings are combined)."""
    observation, state = await scraped(metrics_text, slots)
    assert (observation.error, state) == (error, "ready")
    reading = observation.reading
    assert figures is None or (reading.kv_tokens, reading.kv_capacity, reading.running) == figures


async def test_slot_figures_of_the_wrong_kind_count_zero_and_the_next_scrape_reads():
    """A list or a table where /slots has a count reads as 0 (the scrape goes on); a good engine scraped after it
    is read as usual."""
    bad, _ = await scraped("llamacpp:requests_processing 1\n", '[{"n_ctx": [8], "is_processing": true, "n_prompt_tokens": {}}]')
    good, state = await scraped(VLLM_BLOCKS + "vllm:kv_cache_usage_perc 0.25\n")
    assert (bad.error, bad.reading.kv_tokens, bad.reading.kv_capacity, bad.reading.kv_usage) == (None, 0, 0, None)
    assert (good.error, state, good.reading.kv_tokens) == (None, "ready", 400)


class LongBody(httpx.AsyncByteStream):
    """A body of 16 pieces of a megabyte, counting the pieces read."""

    def __init__(self):
        self.sent = 0

    async def __aiter__(self):
        for self.sent in range(1, 17):
            yield b"x" * (1 << 20)


class DownHost:
    """A driver host holding one model's engine down, keeping what probe reports of it."""

    def __init__(self):
        self.reports: list = []

    def engine_down(self, model, gpus) -> bool:
        return True

    def report_state(self, model, state, error, gpus) -> None:
        self.reports.append((state, error))


async def test_probe_asks_identity_and_leaves_a_long_health_body_unread(autojump_clock):
    """probe's GET /health asks Accept-Encoding identity and reports ready without reading the body."""
    asked, body = [], LongBody()

    def answer(request):
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, stream=body)
    host = DownHost()
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with trio.move_on_after(1.5):
            await scrape.probe(client, "m", "http://engine:8000", 1.0, host)
    assert (asked, host.reports, body.sent) == (["identity"], [("ready", None)], 0)
