"""Red team: what the daemon reads from a hostile engine (its stream, its /metrics), and the engine URLs it shows.

Each test reproduces a defect found by attacking the openai driver with a fake engine on 127.0.0.1 (the
pattern of test_openai_driver.py), in a real Runtime (journal, kernel, drivers; no FUSE). They are
xfail(strict) until the defect is mended: whoever mends one turns its test on.
"""
import base64
import gzip
import json
import math

import httpx
import pytest
import trio

import daemon
import runtasks
from apeinxfs import drivers
from apeinxfs.drivers import metrics, openai, scrape, sim
from apeinxfs.kernel import endpoints
from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes import models
from engines import free_port
from fakehttp import read_request
from test_journal_runtime import open_runtime
from test_tenant_nodes import ADMIN
from test_openai_driver import run_tasks

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
ONE_TOKEN = b'data: {"choices":[{"text":" w"}]}\n\n'
ENDED = b'data: {"choices":[{"text":"","finish_reason":"length"}],"usage":{"completion_tokens":1}}\n\n'
NOT_ENDING_S = 6  # how long a test waits for a task its engine keeps busy (timeout_s is 0.5 there)
SCRAPES = 10  # /metrics reads of each engine a scraping test waits for (one every 0.2 s: two_models_config)
SCRAPED_WITHIN_S = 30  # the most those may take, far above 2 s: past it the test fails


def answering(answer, metrics: str = "", gets: list[str] | None = None):
    """A fake engine's connection handler: `answer(stream)` to each POST, `metrics` (or what it returns, if
    callable) as its /metrics; the path of each GET appended to `gets`, if given."""
    async def handle(stream):
        request = await read_request(stream)
        if request is None:
            return
        try:
            if request.body is None:
                if gets is not None:
                    gets.append(request.path)
                body = (metrics() if callable(metrics) else metrics).encode()
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                                      % len(body) + body)
            else:
                await answer(stream)
        except trio.BrokenResourceError:
            pass
    return handle


async def serve(nursery, answer, metrics: str = "", gets: list[str] | None = None) -> int:
    listeners = await nursery.start(trio.serve_tcp, answering(answer, metrics, gets), 0)
    return listeners[0].socket.getsockname()[1]


async def pings_forever(stream):
    await stream.send_all(HEAD)
    while True:
        await stream.send_all(b": ping\n\n")
        await trio.sleep(0.05)


async def headers_trickled(stream):
    await stream.send_all(b"HTTP/1.1 200 OK\r\n")
    while True:
        await stream.send_all(b"x")
        await trio.sleep(0.1)


async def one_endless_line(stream):
    await stream.send_all(HEAD + b"data: ")
    while True:
        await stream.send_all(b"x" * 65536)
        await trio.sleep(0.001)


async def data_lines_never_ending_an_event(stream):
    await stream.send_all(HEAD)
    while True:  # lines of 64 KiB: the event passes 1 MiB in 17 sends, well within timeout_s under load
        await stream.send_all(b"data: " + b"x" * 65536 + b"\n")
        await trio.sleep(0.001)


async def one_endless_chunk(stream):
    await stream.send_all(HEAD.replace(b"connection", b"transfer-encoding: chunked\r\nconnection") + b"fffffffffff\r\n")
    while True:
        await stream.send_all(b"x" * 65536)
        await trio.sleep(0.001)


async def an_error_body_then_silence(stream):
    await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 100000\r\n\r\n" + b"x" * openai.ERROR_BYTES)
    await trio.sleep_forever()


async def an_endless_error_body(stream):
    await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
    while True:
        await stream.send_all(b"x" * 65536)
        await trio.sleep(0.001)


BUSY_WITHOUT_TOKENS = {  # an engine's answer, and the bound that ends it
    "pings": (pings_forever, "no token for 0.5 s after 0 tokens"),
    "trickled head": (headers_trickled, "no token for 0.5 s after 0 tokens"),
    "endless line": (one_endless_line, "stream broke after 0 tokens: a line of over 1048576 bytes"),
    "endless event": (data_lines_never_ending_an_event,
                      "stream broke after 0 tokens: an event of over 1048576 characters of data"),
    "endless chunk": (one_endless_chunk, "stream broke after 0 tokens: a line of over 1048576 bytes"),
    "endless error body": (an_endless_error_body, "HTTP 400: " + "x" * openai.ERROR_BYTES),
    "error body, then silence": (an_error_body_then_silence, "HTTP 400: " + "x" * openai.ERROR_BYTES),
}


@pytest.mark.parametrize("case", BUSY_WITHOUT_TOKENS)
async def test_an_engine_busy_without_tokens_does_not_hold_its_task_for_ever(case, tmp_path, nursery):
    """A task whose engine sends bytes but never a token ends with the reason of the bound it hit (timeout_s 0.5), not held for ever."""
    answer, words = BUSY_WITHOUT_TOKENS[case]
    port = await serve(nursery, answer)
    config = daemon.engine_config("openai", url=f"http://127.0.0.1:{port}", timeout_s=0.5, retries=0, metrics_s=0)
    with open_runtime(tmp_path, config.replace("context = 4096", "context = 4096\nresume_limit = 0")) as rt:
        async with trio.open_nursery() as inner:
            await inner.start(rt.run)
            pid = rt.commit([Submit(spec=TaskSpec(name="a", max_tokens=5), uid=1000)])[0]
            with trio.move_on_after(NOT_ENDING_S):
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            task = rt.kernel.tasks[pid]
            inner.cancel_scope.cancel()
    assert task.exit == f"failed: engine at http://127.0.0.1:{port}: {words}"


@pytest.mark.parametrize("usage", ['{"completion_tokens":Infinity}', '{"completion_tokens":1.5}',
                                   '{"prompt_tokens":-1000000000,"completion_tokens":1}'])
async def test_an_engines_usage_out_of_range_is_not_counted(usage, tmp_path, nursery):
    """An engine's usage of Infinity, 1.5 or negative tokens fails its task naming the engine; the books stay integers >= 0."""
    async def answer(stream):
        await stream.send_all(HEAD + b'data: {"choices":[{"text":" x","finish_reason":"length"}],"usage":%s}\n\n'
                              % usage.encode())
    port = await serve(nursery, answer)
    [task] = await run_tasks(tmp_path, port, [{"name": "a", "max_tokens": 5}], metrics_s=0)
    assert type(task.tokens_out) is int and 0 <= task.tokens_out <= 5
    assert task.exit.startswith("failed: engine at")


def lies_more_each_time() -> callable:
    """/metrics whose negative KV figure changes at each scrape: -5000, -5001, ..."""
    scrapes = iter(range(5000, 10 ** 6))
    return lambda: f"sglang:num_used_tokens -{next(scrapes)}\n"


async def scraped_ten_times(tmp_path, liar: int, honest: int, gets: tuple[list[str], list[str]]):
    """The runtime of models liar and honest on these engines (their GETs' paths in `gets`), closed once each
    engine's /metrics was read SCRAPES times, or at an observe bug; TooSlowError after SCRAPED_WITHIN_S."""
    with open_runtime(tmp_path, two_models_config(liar, honest)) as rt:
        async with trio.open_nursery() as inner:
            await inner.start(rt.run)
            with trio.fail_after(SCRAPED_WITHIN_S):
                while "driver.openai.observe" not in rt.supervisor.bugs and \
                        min(paths.count("/metrics") for paths in gets) < SCRAPES:
                    await trio.sleep(0.05)
            inner.cancel_scope.cancel()
    return rt


@pytest.mark.parametrize("lie", [lambda: "sglang:num_used_tokens -5000\n", lies_more_each_time()],
                         ids=["same", "changing"])
async def test_one_engines_negative_kv_report_leaves_other_engines_scraped(lie, tmp_path, nursery, caplog):
    """An engine whose /metrics says -5000 KV tokens (or a figure changing at each scrape), scraped 10 times,
    makes no bug of the loop scraping the others: its refusal is its scrape error, logged once."""
    gets: tuple[list[str], list[str]] = ([], [])
    liar = await serve(nursery, None, lie, gets[0])
    honest = await serve(nursery, None, "sglang:num_used_tokens 0\n", gets[1])
    rt = await scraped_ten_times(tmp_path, liar, honest, gets)
    assert "driver.openai.observe" not in rt.supervisor.bugs and "honest" in rt.engine_metrics
    assert rt.engine_metrics["liar"].error.startswith("its KV report is refused: an engine's KV report of -50")
    logged = [r.getMessage() for r in caplog.records if "liar" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("model liar: its KV report is refused: ")


async def test_an_engines_overflowing_figures_end_no_observe_loop_and_others_are_scraped(tmp_path, nursery):
    """An engine whose /metrics says 1e300 KV tokens at a usage of 1e-320, scraped 10 times, makes no bug of the
    observe loop: it and the other engine are both scraped."""
    gets: tuple[list[str], list[str]] = ([], [])
    liar = await serve(nursery, None, "llamacpp:kv_cache_usage_ratio 1e-320\nllamacpp:kv_cache_tokens 1e300\n", gets[0])
    honest = await serve(nursery, None, "sglang:num_used_tokens 0\n", gets[1])
    rt = await scraped_ten_times(tmp_path, liar, honest, gets)
    assert "driver.openai.observe" not in rt.supervisor.bugs
    assert rt.engine_metrics["honest"].error is None and rt.engine_metrics["liar"].reading is not None


async def test_a_daemon_bug_in_the_parse_is_a_bug_row_not_an_engines_error(tmp_path, nursery, monkeypatch):
    """A TypeError raised by our own parse (a daemon bug, not the engine's fault) is the observe loop's Bug row
    (/ai/health), not the engine's scrape error (LastError)."""
    def broken(lines, first):
        raise TypeError("a daemon bug")
    monkeypatch.setattr(metrics, "parse_lines", broken)
    gets: tuple[list[str], list[str]] = ([], [])
    port = await serve(nursery, None, "sglang:num_used_tokens 0\n", gets[0])
    rt = await scraped_ten_times(tmp_path, port, port, (gets[0], gets[0]))
    assert rt.supervisor.bugs["driver.openai.observe"].error == "TypeError"
    assert "Bug:\tdriver.openai.observe: TypeError at test_hostile_engines.py:" in rt.supervisor.show()
    assert not any("daemon bug" in (seen.error or "") for seen in rt.engine_metrics.values())


async def test_an_engine_reporting_more_kv_than_its_gpu_holds_does_not_block_other_models(tmp_path, nursery):
    """After one engine reports 1e30 KV tokens on the GPU they share, the other model's task still runs to done."""
    async def answer(stream):
        await stream.send_all(HEAD + ONE_TOKEN + ENDED)
    liar = await serve(nursery, answer, "sglang:num_used_tokens 1e30\n")
    honest = await serve(nursery, answer, "sglang:num_used_tokens 0\n")
    with open_runtime(tmp_path, two_models_config(liar, honest)) as rt:
        async with trio.open_nursery() as inner:
            await inner.start(rt.run)
            with trio.fail_after(NOT_ENDING_S):
                while getattr(rt.engine_metrics.get("liar"), "reading", None) is None:
                    await trio.sleep(0.05)
            pid = rt.commit([Submit(spec=TaskSpec(name="h", model="honest", max_tokens=3), uid=1000)])[0]
            with trio.move_on_after(NOT_ENDING_S):
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            task = rt.kernel.tasks[pid]
            status = models.status(rt.kernel, "liar", rt.engine_states.get("liar"))
            inner.cancel_scope.cancel()
    assert task.exit == "done"
    assert "LastError:\thttp://127.0.0.1:%d/metrics: its KV report is refused: " % liar in status


async def test_an_engine_urls_credentials_are_not_in_a_tasks_exit(tmp_path):
    """A task failed by an unreachable engine whose URL holds user:password names the engine without the password."""
    port = free_port()
    config = daemon.engine_config("openai", url=f"http://admin:s3cret@127.0.0.1:{port}", retries=0, backoff_s=0.01,
                                  metrics_s=0)
    [task] = await runtasks.run_tasks(tmp_path, config.replace("context = 4096", "context = 4096\nengine_wait_s = 0.5"),
                                      [{"name": "a", "max_tokens": 5}])
    assert task.exit.startswith("failed:") and f"127.0.0.1:{port}" in task.exit
    assert "s3cret" not in task.exit


async def test_an_engine_urls_credentials_are_not_in_its_models_files(tmp_path, nursery):
    """models/NAME/config and engine (its scrape's source and error) name the engine as http://***@host."""
    port = await serve(nursery, None, "vllm:kv_cache_usage_perc 50\n")
    config = daemon.engine_config("openai", url=f"http://admin:s3cret@127.0.0.1:{port}", metrics_s=0.05)
    with open_runtime(tmp_path, config) as rt:
        async with trio.open_nursery() as inner:
            await inner.start(rt.run)
            with trio.fail_after(NOT_ENDING_S):
                while getattr(rt.engine_metrics.get("tiny"), "error", None) is None:
                    await trio.sleep(0.05)
            inner.cancel_scope.cancel()
        files = [models.config(rt.kernel, "tiny"), models.engine(rt.engine_metrics["tiny"], 0),
                 models.status(rt.kernel, "tiny", rt.engine_states.get("tiny"))]
    assert f"url http://***@127.0.0.1:{port}\n" in files[0]
    assert f"source http://***@127.0.0.1:{port}/metrics\n" in files[1] and "LastError:\thttp://***@" in files[2]
    assert not any("s3cret" in text or "admin" in text for text in files)


@pytest.mark.parametrize("text, shown", [("http://u:p@h:1/x", "http://***@h:1/x"), ("https://tok@h", "https://***@h"),
                                         ("at http://h/a@b and ftp://u@h", "at http://h/a@b and ftp://***@h"),
                                         ("http://h:8000", "http://h:8000"), ("http://u:p@ss@h", "http://***@h"),
                                         ("endpoints=http://u:p@h:1@0,http://v@h:2@1+2",
                                          "endpoints=http://***@h:1@0,http://***@h:2@1+2")])
def test_redacted_hides_only_a_urls_userinfo(text, shown):
    """`redacted` replaces what is before a URL's host's `@` (its last, not an `@GPU` ending it), not an `@` in its
    path, in any text."""
    assert endpoints.redacted(text) == shown


def two_models_config(liar: int, honest: int) -> str:
    """One simulated GPU shared by two openai models, `liar` and `honest`, on those ports, scraped every 0.2 s."""
    models = [f'[[models]]\nname = "{name}"\ndriver = "openai"\n{shape}\n[models.options]\n'
              f'url = "http://127.0.0.1:{port}"\nmetrics_s = 0.2\n'
              for name, port in (("liar", liar), ("honest", honest))
              for shape in ["\n".join(f"{k} = {json.dumps(v)}" for k, v in daemon.TINY_SHAPE.items())]]
    return "[gpus]\nsimulated = 1\nslots = 4\n" + "".join(models)



async def test_a_metrics_body_of_a_million_lines_is_refused(nursery):
    """A /metrics of a million samples is an observation error (too large), not a reading parsed whole."""
    body = "".join(f'vllm:num_requests_running{{engine="{i}"}} 1\n' for i in range(1_000_000))
    port = await serve(nursery, None, body)
    async with httpx.AsyncClient() as client:
        observation, _ = await scrape.scrape(client, f"http://127.0.0.1:{port}", timeout_s=10.0)
    assert observation.reading is None and "body is over" in observation.error


async def test_a_compressed_metrics_body_is_refused_and_identity_was_asked(nursery):
    """A scrape asks for identity, and a gzip /metrics (8 MB in 8 KB) is an observation error, not decompressed."""
    requests = []

    async def gzip_answer(stream):
        requests.append(await read_request(stream))
        body = gzip.compress(b"# padding\n" * 800_000)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n"
                              b"connection: close\r\n\r\n" % len(body) + body)
    listeners = await nursery.start(trio.serve_tcp, gzip_answer, 0)
    async with httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        observation, _ = await scrape.scrape(client, url, timeout_s=10.0)
    assert observation.error == "a compressed body (Content-Encoding: gzip), though identity was asked"
    assert [r.headers["accept-encoding"] for r in requests] == ["identity"]


@pytest.mark.parametrize("option", ["timeout_s", "backoff_s", "metrics_s"])
def test_an_infinite_engine_option_is_refused(option):
    """A model whose options give `option = inf` is refused at start with the option's name."""
    model = type("Model", (), {"name": "m", "options": {"url": "http://e:8000", option: math.inf}})
    with pytest.raises(Invalid, match=option):
        openai.Endpoint.of(model)


@pytest.mark.parametrize("options, words", [
    ({"retries": 1e20}, "retries must be an integer from 0 to 100, not 1e+20"),
    ({"retries": True}, "retries must be an integer from 0 to 100, not True"),
    ({"retries": "3"}, "retries must be an integer from 0 to 100, not '3'"),
    ({"retries": 10 ** 400}, f"retries must be an integer from 0 to 100, not {10 ** 400}"),
    ({"timeout_s": 10 ** 400}, f"timeout_s must be a number of seconds from 0.001 to 86400, not {10 ** 400}"),
    ({"backoff_s": 1e308}, "backoff_s must be a number of seconds from 0 to 3600, not 1e+308"),
    ({"metrics_s": 1e-9}, "metrics_s must be 0 (none) or a number of seconds from 0.01 to 3600, not 1e-09"),
    ({"timeout_s": 0}, "timeout_s must be a number of seconds from 0.001 to 86400, not 0"),
    ({"url": "http://e:99999"}, "url must be an http:// or https:// URL with a host (and a port 1 to 65535), not "
                                "'http://e:99999'"),
    ({"url": "not a url"}, "url must be an http:// or https:// URL"),
    ({"url": "ftp://x"}, "url must be an http:// or https:// URL"),
    ({"url": "http://u:s3cret@e:0"}, "not '***@e:0'"),
    ({"url": "admin:s3cret@e:1"}, "not '***@e:1'"),
    ({"timeout": 5}, "no option 'timeout' (its options: url, engine_model, timeout_s, retries, backoff_s, api, "
                     "metrics_s)"),
])
def test_an_engine_option_out_of_its_bounds_is_refused_in_words(options, words):
    """Options that would mean for ever, never or nothing, a bad URL or an unknown option: refused, saying why."""
    model = type("Model", (), {"name": "m", "options": {"url": "http://e:8000", **options}})
    with pytest.raises(Invalid) as refused:
        openai.Endpoint.of(model)
    assert refused.value.reason.startswith("model m: openai options: ") and words in refused.value.reason


@pytest.mark.parametrize("given, kept, words", [
    ({"retries": 200}, {"retries": 100}, "retries 200 clamped to 100 (the bound)"),
    ({"retries": -1}, {"retries": 0}, "retries -1 clamped to 0 (the bound)"),
    ({"timeout_s": math.inf, "backoff_s": 0.5}, {"timeout_s": 86400.0, "backoff_s": 0.5},
     "timeout_s inf clamped to 86400 (the bound)"),
    ({"timeout_s": 0}, {"timeout_s": 0.001}, "timeout_s 0 clamped to 0.001 (the bound)"),
    ({"metrics_s": 1e-9}, {"metrics_s": 0.01}, "metrics_s 1e-09 clamped to 0.01 (the bound)"),
    ({"retries": 10 ** 400}, {"retries": 100}, f"retries {10 ** 400} clamped to 100 (the bound)"),
    ({"timeout_s": -10 ** 400}, {"timeout_s": 0.001}, f"timeout_s {-10 ** 400} clamped to 0.001 (the bound)"),
    ({"metrics_s": 0, "retries": 3}, None, None),
    ({"retries": 1e20}, None, None), ({"retries": True}, None, None), ({"retries": "300"}, None, None),
    ({"timeout_s": math.nan}, None, None), ({"timeout": 1e9}, None, None), ({"url": "ftp://x"}, None, None),
], ids=["over", "under", "inf", "zero", "below-least", "huge-int", "huge-negative-int", "in-bounds", "float-count",
        "bool", "text", "nan", "unknown", "bad-url"])
def test_a_journal_models_numbers_out_of_bounds_are_clamped_and_the_rest_left_to_refuse(given, kept, words):
    """A number of its kind out of its option's bounds is set to the nearest bound, said in words; a number in them,
    one of the wrong kind (1e20 retries, true), a text, NaN, an unknown option or a bad URL is left as given."""
    model = ModelConfig(name="m", driver="openai", options={"url": "http://e:8000", **given})
    built, said = drivers.kept(openai.OpenAIDriver, {"m": model})
    assert built["m"].options == {"url": "http://e:8000", **(kept or given)} and said.get("m") == words
    assert drivers.kept(sim.SimDriver, {"m": model}) == ({"m": model}, {})


async def test_an_engines_error_text_cannot_add_lines_to_a_tasks_status(tmp_path, nursery):
    """An HTTP 400 whose body holds line ends fails the task with an exit reason of one line."""
    async def answer(stream):
        body = b"bad request\nState:\tdone\nExit:\tdone"
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                              % len(body) + body)
    port = await serve(nursery, answer)
    [task] = await run_tasks(tmp_path, port, [{"name": "a", "max_tokens": 5}], metrics_s=0)
    assert task.exit.startswith("failed: engine at") and "bad request" in task.exit
    assert "\n" not in task.exit and "bad request\\nState:\\tdone" in task.exit


def stream_of(*events: bytes, head: bytes = HEAD):
    """A fake engine's answer: `head`, then `events`."""
    async def answer(stream):
        await stream.send_all(head + b"".join(events))
    return answer


COUNTED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %s\r\nconnection: close\r\n\r\n"
BREAKING_THE_PROTOCOL = {
    "deep JSON": (stream_of(b'data: {"choices":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n\n"), "not JSON"),
    "choices an object": (stream_of(b'data: {"choices":{"text":" w"}}\n\n', ENDED), "choices is not a list"),
    "text a number": (stream_of(b'data: {"choices":[{"text":5}]}\n\n', ENDED), "text is not a string: 5"),
    "usage a string": (stream_of(ONE_TOKEN, ENDED.replace(b'"completion_tokens":1', b'"completion_tokens":"1"')),
                       'usage.completion_tokens is not a number: "1"'),
    "Content-Length abc": (stream_of(ONE_TOKEN, ENDED, head=COUNTED % b"abc"), "bad Content-Length: 'abc'"),
    "Content-Length -1": (stream_of(ONE_TOKEN, ENDED, head=COUNTED % b"-1"), "bad Content-Length: '-1'"),
    "gzip": (stream_of(gzip.compress(ONE_TOKEN + ENDED), head=HEAD.replace(b"connection", b"content-encoding: gzip\r\n"
                                                                            b"connection")),
             "a compressed answer (Content-Encoding: gzip), though identity was asked"),
}


@pytest.mark.parametrize("case", BREAKING_THE_PROTOCOL)
async def test_an_engine_breaking_the_protocol_fails_its_task_naming_what_it_sent(case, tmp_path, nursery):
    """An answer the protocol does not allow fails its task as the engine's fault, in words naming it: not a driver bug."""
    answer, words = BREAKING_THE_PROTOCOL[case]
    port = await serve(nursery, answer)
    [task] = await run_tasks(tmp_path, port, [{"name": "a", "max_tokens": 5}], metrics_s=0)
    assert task.exit.startswith("failed: engine at") and words in task.exit


CREDENTIALS = b"Basic " + base64.b64encode(b"admin:s3cret")


async def test_an_engine_behind_basic_auth_is_scraped_with_its_urls_credentials(nursery):
    """The scraper sends the URL's user:password (the engine answers 401 without them) and shows them as ***."""
    async def handle(stream):
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
        authorized = any(line.lower().startswith(b"authorization:") and line.split(b":", 1)[1].strip() == CREDENTIALS
                         for line in head.split(b"\r\n"))
        body = b"vllm:kv_cache_usage_perc 0.5\n" if authorized else b""
        status = b"200 OK" if authorized else b"401 Unauthorized"
        await stream.send_all(b"HTTP/1.1 %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body))
                              + body)
    port = (await nursery.start(trio.serve_tcp, handle, 0))[0].socket.getsockname()[1]
    async with httpx.AsyncClient() as client:
        observation, state = await scrape.scrape(client, f"http://admin:s3cret@127.0.0.1:{port}", timeout_s=5.0)
    assert (observation.error, state) == (None, "ready") and observation.reading.kv_usage == 0.5
    assert observation.source == f"http://***@127.0.0.1:{port}/metrics"


def test_a_model_added_with_credentials_in_its_urls_is_traced_and_audited_without_them(tmp_path):
    """`add ext ... endpoints=http://admin:s3cret@h@GPU,...` shows in the trace and audit as http://***@h."""
    written = "add ext driver=openai endpoints=http://admin:s3cret@127.0.0.1:9@0"
    with open_runtime(tmp_path) as rt:
        models.models_ctl(rt)([written.encode()], ADMIN)
        trace, audit = rt.kernel.trace.buffer.decode(), rt.kernel.audit.buffer.decode()
    [line] = [line for line in trace.splitlines() if line.split(",")[2] == "model"]
    assert "endpoints=http://***@127.0.0.1:9@0 by uid 0" in line
    assert "s3cret" not in trace and "s3cret" not in audit and "http://***@127.0.0.1:9" in audit
