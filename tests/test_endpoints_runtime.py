"""Tier 2: endpoints per GPU in the daemon, without FUSE: the TOML table, `ctl/models add endpoints=`,
the openai driver's routing, engine states per endpoint and the EngineKV reports the runtime journals
(runtime.py), and the files that show them (/models/NAME/status, /memory/gpuN/pool)."""
import errno

import pytest

import trio

from apeinxfs import config as config_mod
from apeinxfs.drivers import openai
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import EngineHealth, EngineKV
from apeinxfs.nodes.tree import Tree
from test_engine_scrape import DATA, MetricsServer
from test_journal_runtime import open_runtime, submit
from test_nodes import refusal, text
from test_tenant_nodes import write

# 1 MiB pages of 64 tokens of `llm`'s KV (4 x 8 x 128 x 2 x 2 bytes a token)
TWO_GPUS_AT = """
[gpus]
simulated = 2
slots = 2
[kv]
page_mib = 1
[[models]]
name = "sim"
[[models]]
name = "llm"
driver = "openai"
layers = 4
kv_heads = 8
head_dim = 128
endpoints = [{url = "URL0", gpus = [0]}, {url = "URL1", gpus = [1]}]
[models.options]
retries = 0
metrics_s = 0.02
"""
TWO_GPUS = TWO_GPUS_AT.replace("URL0", "http://127.0.0.1:9").replace("URL1", "http://127.0.0.1:10")


def journaled(rt, kind) -> list:
    return [event for _, _, event in rt.journal.replay() if isinstance(event, kind)]


def pool(tree, gpu: int) -> dict:
    return dict(line.split(" ", 1) for line in text(tree, f"/memory/gpu{gpu}/pool").splitlines())


@pytest.mark.parametrize("table, reason", [
    ('endpoints = [{url = "http://a", gpus = [0]}]\n[models.options]\nurl = "http://b"', "either options.url"),
    ('endpoints = [{url = "http://a", gpus = [0, 1]}, {url = "http://b", gpus = [1]}]', "GPU 1 is bound to two"),
    ('endpoints = [{url = "http://a", gpus = [2]}]', "bound to GPU 2, but there are 2 GPUs"),
    ('endpoints = [{url = "http://a", gpu = 0}]', "with those two keys"),
])
def test_a_bad_endpoints_table_stops_the_start_with_the_reason(tmp_path, table, reason):
    """The configuration is refused (EINVAL) naming what is wrong: url beside endpoints, a GPU twice, a GPU
    the node lacks, a misspelt key."""
    path = tmp_path / "config.toml"
    path.write_text(f'[gpus]\nsimulated = 2\n[[models]]\nname = "llm"\ndriver = "openai"\n{table}\n')
    with pytest.raises(ApeinxError) as refused:
        config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    assert refused.value.errno == errno.EINVAL and reason in refused.value.reason


def test_the_openai_driver_sends_each_gpu_to_its_endpoint(tmp_path):
    """The driver builds one endpoint per entry, with the model's other options, and routes a GPU to its own."""
    with open_runtime(tmp_path, TWO_GPUS) as rt:
        driver = openai.OpenAIDriver({"llm": rt.kernel.models["llm"]})
    (gpus0, first), (gpus1, second) = driver._route("llm", 0), driver._route("llm", 1)
    assert (gpus0, first.url, gpus1, second.url) == ((0,), "http://127.0.0.1:9", (1,), "http://127.0.0.1:10")
    assert first.retries == second.retries == 0
    one = config_mod.ModelConfig(name="one", driver="openai", options={"url": "http://h"})
    assert list(openai.Endpoint.by_gpus(one)) == [()]


def test_ctl_models_add_takes_endpoints_and_refuses_bad_ones(tmp_path):
    """`endpoints=URL@GPU,URL@GPU+GPU` adds a model on those GPUs; a malformed item, a GPU twice or missing,
    and url= beside endpoints= are EINVAL with the reason."""
    with open_runtime(tmp_path, TWO_GPUS) as rt:
        tree = Tree(rt)
        cases = [(b"add x driver=openai endpoints=http://a\n", "endpoints= takes URL@GPU"),
                 (b"add x driver=openai endpoints=http://a@0,http://b@0\n", "GPU 0 is bound to two endpoints"),
                 (b"add x driver=openai endpoints=http://a@0+3\n", "bound to GPU 3, but there are 2 GPUs"),
                 (b"add x driver=openai endpoints=http://a@x\n", "an endpoint's GPU must be an integer"),
                 (b"add x driver=openai url=http://h endpoints=http://a@0\n", "either options.url")]
        for line, words in cases:
            error = refusal(lambda: write(tree, "/ctl/models", line))
            assert (error.errno, words in error.reason) == (errno.EINVAL, True), (line, error.reason)
        write(tree, "/ctl/models", b"add pair driver=openai endpoints=http://a:1@1,http://b:2@0 retries=0\n")
        status = text(tree, "/models/pair/status")
        assert "Gpus:\t0,1\n" in status
        assert "Endpoints:\thttp://a:1 gpus=1 starting; http://b:2 gpus=0 starting\n" in status


def test_one_endpoint_unreachable_is_journaled_for_its_gpus_and_the_model_stays_up(tmp_path):
    """An endpoint's check finds it unreachable: an EngineHealth naming its GPUs is journaled, status shows
    it beside the other (ready), whose state is the model's; it coming back is journaled too."""
    with open_runtime(tmp_path, TWO_GPUS) as rt:
        tree = Tree(rt)
        rt.report_state("llm", "ready", None, (0,))
        rt.report_state("llm", "unreachable", "http://127.0.0.1:10: refused", (1,))
        assert rt.kernel.engines.is_down("llm", (1,)) and not rt.kernel.engines.is_down("llm")
        status = text(tree, "/models/llm/status")
        assert "State:\tready\n" in status and "http://127.0.0.1:10 gpus=1 unreachable" in status
        rt.report_state("llm", "ready", None, (1,))
        assert [(e.up, e.gpus) for e in journaled(rt, EngineHealth)] == [(False, (1,)), (True, (1,))]


def test_kv_reports_are_journaled_when_their_pages_change_or_go_beyond_the_books(tmp_path):
    """The first report is journaled; one in the same pages is not; one over the books counts the pages
    beyond them as used (pool shows both); a report of the same pages is not journaled again while the books
    stay as they were (not at every scrape while the excess lasts); one that agrees ends it."""
    with open_runtime(tmp_path, TWO_GPUS) as rt:
        tree = Tree(rt)
        rt.report_kv("llm", (0,), 0)
        rt.report_kv("llm", (0,), 0)
        assert len(journaled(rt, EngineKV)) == 1 and pool(tree, 0)["engine_pages"] == "0"
        rt.report_kv("llm", (0,), 100)  # 2 pages, the books none
        books = pool(tree, 0)
        assert (books["engine_pages"], books["engine_tokens"], books["pages_used"]) == ("2", "100", "0")
        assert books["unbooked_pages"] == "2"
        rt.report_kv("llm", (0,), 120)  # the same 2 pages, the books as they were: nothing new to decide
        assert len(journaled(rt, EngineKV)) == 2 and pool(tree, 0)["unbooked_pages"] == "2"
        rt.report_kv("llm", (0,), 0)
        assert pool(tree, 0)["unbooked_pages"] == "0" and pool(tree, 1)["engine_pages"] == "-"
        assert len(journaled(rt, EngineKV)) == 3


async def test_each_endpoint_is_scraped_and_its_kv_report_reaches_its_gpu(tmp_path, nursery):
    """A vLLM engine on GPU 0 and an SGLang one on GPU 1: each scrape's KV tokens (vLLM's usage x its cache
    config, SGLang's used tokens) reach the kernel as EngineKV of its endpoint's GPU and show in its pool;
    with nothing in the books all they report counts as used; the engine file shows both endpoints together."""
    servers = [await MetricsServer({"/metrics": (DATA / name).read_text()}).start(nursery)
               for name in ("vllm-metrics.txt", "sglang-metrics.txt")]
    urls = [f"http://127.0.0.1:{server.port}" for server in servers]
    with open_runtime(tmp_path, TWO_GPUS_AT.replace("URL0", urls[0]).replace("URL1", urls[1])) as rt:
        driver = openai.OpenAIDriver({"llm": rt.kernel.models["llm"]})
        async with trio.open_nursery() as scraping:
            scraping.start_soon(driver.observe, rt)
            with trio.fail_after(10):
                while min(server.hits.get("/metrics", 0) for server in servers) < 2:
                    await trio.sleep(0.01)
            scraping.cancel_scope.cancel()
        tree = Tree(rt)
        reports = {event.gpus: event.tokens for event in journaled(rt, EngineKV)}
        assert reports == {(0,): 240000, (1,): 123456}
        assert [pool(tree, gpu)["engine_tokens"] for gpu in (0, 1)] == ["240000", "123456"]
        assert all(pool(tree, gpu)["unbooked_pages"] == pool(tree, gpu)["engine_pages"] != "0" for gpu in (0, 1))
        engine = dict(line.split(" ", 1) for line in text(tree, "/models/llm/engine").splitlines())
        assert engine["source"] == f"{urls[0]}/metrics,{urls[1]}/metrics" and engine["kv_tokens"] == "363456"
        assert "State:\tready" in text(tree, "/models/llm/status")


@pytest.mark.parametrize("down", [[(1,)], [(0,), (1,)]], ids=["one endpoint", "every endpoint"])
def test_a_report_of_the_whole_model_opens_no_endpoint_unless_it_says_failed(tmp_path, down):
    """Endpoints journaled down, then a report naming no GPUs: `starting` (a working driver's start) leaves them
    closed (no task sent to an endpoint known down; the model down while all are), `failed` (a driver that cannot
    be built) opens each, none an outage to wait out."""
    with open_runtime(tmp_path, TWO_GPUS) as rt:
        for gpus in down:
            rt.report_state("llm", "unreachable", "refused", gpus)
        closed = (rt.kernel.engines.is_down("llm"), rt.kernel.engines.where("llm", [0, 1]))
        rt.report_state("llm", "starting")
        started = (rt.kernel.engines.is_down("llm"), rt.kernel.engines.where("llm", [0, 1]))
        rt.report_state("llm", "failed", "the driver cannot be built")
        assert started == closed == (len(down) == 2, [0, 1][:2 - len(down)])
        assert (rt.kernel.engines.is_down("llm"), rt.kernel.engines.where("llm", [0, 1])) == (False, [0, 1])
        assert [(e.up, e.gpus) for e in journaled(rt, EngineHealth)][len(down):] == [(True, gpus) for gpus in down]


async def test_a_working_driver_restarted_with_every_endpoint_down_fails_its_task_after_engine_wait_s(
        tmp_path, autojump_clock):
    """Both endpoints of llm were down when the daemon stopped and still are: after the restart its task stalls
    and fails once engine_wait_s has passed (not left out of every GPU, never stalled, for ever)."""
    conf = TWO_GPUS.replace("metrics_s = 0.02", "metrics_s = 0")
    with open_runtime(tmp_path, conf) as rt:
        for gpus in [(0,), (1,)]:
            rt.report_state("llm", "unreachable", "refused", gpus)
    with open_runtime(tmp_path, conf) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            pid = submit(rt, model="llm")
            with trio.fail_after(rt.kernel.models["llm"].engine_wait_s + 60):
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            nursery.cancel_scope.cancel()
    assert rt.kernel.tasks[pid].exit.startswith("failed: llm's engine down for ")
