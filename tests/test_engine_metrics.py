"""Tier 1: engine metrics (drivers/metrics.py) on samples of each engine in tests/data (see its README)."""
import json
from pathlib import Path

import pytest

from apeinxfs.drivers import metrics

DATA = Path(__file__).resolve().parent / "data"


def sample(name: str) -> list[metrics.Sample]:
    return metrics.parse((DATA / name).read_text())


def read_samples(samples: list[metrics.Sample]) -> metrics.Reading:
    """What the engine of these samples says of its KV cache and requests, as a scrape reads it (scrape.py)."""
    return metrics.reading_of(metrics.Gauges(samples))


def test_vllm_sample_sums_data_parallel_engines_and_sizes_kv_from_cache_config():
    """vLLM: running and waiting summed over its 2 engines, usage averaged, tokens from blocks x block_size."""
    reading = read_samples(sample("vllm-metrics.txt"))
    assert reading == metrics.Reading("vllm", kv_usage=0.375, kv_tokens=240_000, kv_capacity=640_000,
                                      running=21, waiting=3)


def test_vllm_before_the_rename_reads_gpu_cache_usage_perc():
    """An older vLLM with only vllm:gpu_cache_usage_perc (and no cache_config_info) still gives the usage."""
    text = ('# TYPE vllm:gpu_cache_usage_perc gauge\n'
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.42\nvllm:num_requests_waiting{model_name="m"} 7.0\n')
    reading = read_samples(metrics.parse(text))
    assert (reading.kv_usage, reading.kv_tokens, reading.waiting, reading.running) == (0.42, None, 7, None)


def test_sglang_sample_counts_tensor_parallel_copies_once():
    """SGLang repeats each gauge per tp_rank: 14 running, not 28; tokens and usage from its own gauges."""
    reading = read_samples(sample("sglang-metrics.txt"))
    assert reading == metrics.Reading("sglang", kv_usage=0.30864, kv_tokens=123_456, kv_capacity=400_000,
                                      running=14, waiting=5)


def test_llamacpp_sample_has_no_kv_gauge_so_slots_give_it():
    """This llama-server exports no KV gauge; /slots gives the tokens of the 3 busy slots over 4 x 4096."""
    reading = read_samples(sample("llamacpp-metrics.txt"))
    assert (reading.engine, reading.running, reading.waiting, reading.kv_usage) == ("llamacpp", 3, 0, None)
    assert metrics.wants_slots(reading)
    slots = json.loads((DATA / "llamacpp-slots.json").read_text())
    full = metrics.with_slots(reading, slots)
    assert (full.kv_tokens, full.kv_capacity) == (561 + 561 + 560, 4 * 4096)
    assert full.kv_usage == pytest.approx(1682 / 16384)


def test_older_llamacpp_sample_reads_its_kv_gauges():
    """Older llama-server builds' kv_cache_usage_ratio and kv_cache_tokens are read, capacity derived."""
    reading = read_samples(sample("llamacpp-old-metrics.txt"))
    assert reading == metrics.Reading("llamacpp", 0.1875, 3072, 16384, 2, 1)
    assert not metrics.wants_slots(reading)


def test_parse_reads_labels_escapes_timestamps_and_special_values():
    """Escaped quotes and backslashes in labels, a trailing comma, a timestamp, NaN and +Inf all parse."""
    text = ('# HELP x y\nm{a="q\\"uote",b="back\\\\slash",} 1.5 1700000000000\nn +Inf\n'
            'o{le="0.5"} NaN\n\n   # indented comment\n')
    parsed = metrics.parse(text)
    assert [(s.name, s.labels) for s in parsed] == [("m", {"a": 'q"uote', "b": "back\\slash"}), ("n", {}),
                                                    ("o", {"le": "0.5"})]
    assert parsed[0].value == 1.5 and parsed[1].value == float("inf")


@pytest.mark.parametrize("text", ["<html><body>Not Found</body></html>", 'm{a="1" b="2"} 1', "m 1 2 3", "m{a=1} 2"])
def test_parse_refuses_what_is_not_the_exposition_format(text):
    """An HTML page or a malformed sample line is Unreadable, naming the line."""
    with pytest.raises(metrics.Unreadable, match="line 1"):
        metrics.parse(text)


@pytest.mark.parametrize("text", ["vllm:kv_cache_usage_perc 50\n", "sglang:token_usage -0.5\n",
                                  "llamacpp:kv_cache_usage_ratio 2\nllamacpp:kv_cache_tokens 10\n"])
def test_a_kv_usage_outside_0_to_1_is_unreadable(text):
    """A KV usage that is not a fraction 0 to 1 (vLLM's 50 would be 50 caches' tokens) is Unreadable, with the usage."""
    with pytest.raises(metrics.Unreadable, match="usage of .* is not a fraction 0 to 1"):
        read_samples(metrics.parse(text))


def test_unknown_engine_and_bad_slots():
    """Metrics of no known engine give an empty reading; /slots that is not llama.cpp's is Unreadable."""
    assert read_samples(metrics.parse("process_cpu_seconds_total 3.5\n")) == metrics.Reading("unknown")
    with pytest.raises(metrics.Unreadable):
        metrics.with_slots(metrics.Reading("llamacpp"), {"error": "slots endpoint disabled"})


def test_combine_weights_usage_by_capacity_and_sums_the_rest():
    """Two engines: 1000 of 4000 and 3000 of 4000 tokens are 50% in all; counts add up."""
    one = metrics.Reading("vllm", 0.25, 1000, 4000, 2, 0)
    two = metrics.Reading("sglang", 0.75, 3000, 4000, 5, 1)
    assert metrics.combine([one, two]) == metrics.Reading("all", 0.5, 4000, 8000, 7, 1)
    no_capacity = metrics.Reading("vllm", 0.2)
    assert metrics.combine([no_capacity, one]).kv_usage == pytest.approx(0.225)
    assert metrics.combine([]) == metrics.Reading("all", None, 0, 0, 0, 0)
