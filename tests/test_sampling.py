"""Tiers 1-2: a task's sampling keys from the submit line to the engine's request.

The grammar's three forms, the ranges in each refusal, the journal's encoding (and old
journals without the keys), the status line, policy's max_temperature, the sim's seed and
what the openai, triton and llamacpp drivers send. The real engine is in
test_engine_sampling.py.
"""
import errno
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apeinxfs.drivers import llamacpp, openai, sim, triton
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import SetRules, Submit, from_row, to_row
from apeinxfs.kernel.grammar import parse_submit
from apeinxfs.kernel.policy import Request, evaluate, parse_rule
from apeinxfs.kernel.sampling import Sampling
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes.tasks import status
from test_journal_runtime import open_runtime
from test_llamacpp_driver import FakeLlama
from test_openai_driver import FakeEngine, run_tasks
from test_tenancy import admit, config, trace_rows

SET = Sampling(temperature=0.0, top_p=0.9, top_k=40, seed=7, stop=("###", "\n"), presence_penalty=-0.5,
               frequency_penalty=1.5)


def task_of(spec: TaskSpec, tokens_out: int = 0, output: bytes = b""):
    """What a driver reads of a kernel task."""
    return type("Task", (), {"spec": spec, "pid": 3, "model": "m", "tokens_out": tokens_out,
                             "output": bytearray(output)})


# -- the grammar -----------------------------------------------------------------------------------


def test_key_value_and_json_forms_give_the_same_sampling():
    """Every key in the key=value form and in the JSON form parses to the same record."""
    pairs = parse_submit('name=a temperature=0 top_p=0.9 top_k=40 seed=7 stop="###|\\n" presence_penalty=-0.5 '
                         'frequency_penalty=1.5')
    json = parse_submit('{"name": "a", "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7, '
                        '"stop": ["###", "\\n"], "presence_penalty": -0.5, "frequency_penalty": 1.5}')
    assert pairs.sampling == json.sampling == SET


@pytest.mark.parametrize("line,stops", [
    ("name=a stop=END", ("END",)),
    ("name=a stop=a|b", ("a", "b")),
    ('name=a stop=a stop="b c"', ("a", "b c")),
    ('{"stop": "END"}', ("END",)),
    ('{"stop": ["a|b", "c"]}', ("a|b", "c")),
])
def test_stop_is_a_list_repeated_or_bar_separated(line, stops):
    """stop: repeated or `|`-separated in key=value, one string or a list in JSON."""
    assert parse_submit(line).sampling.stop == stops


def test_no_sampling_key_leaves_none_and_the_seed_form_has_none():
    """Without a sampling key (or in the seed form) the spec's sampling is None: the engine's defaults."""
    assert parse_submit("name=a max_tokens=3").sampling is None
    assert parse_submit("job 10 5").sampling is None
    assert parse_submit('{"name": "a"}').sampling is None


@pytest.mark.parametrize("line,reason", [
    ('{"temperature": -1}', "temperature must be a number in 0..2, not -1"),
    ("name=a temperature=2.5", "temperature must be a number in 0..2, not 2.5"),
    ('{"temperature": NaN}', "temperature must be a number in 0..2"),
    ('{"temperature": true}', "temperature must be a number in 0..2"),
    ("name=a top_p=1.01", "top_p must be a number in 0..1"),
    ("name=a top_p=high", "top_p must be a number, not 'high'"),
    ("name=a top_p=١", "top_p must be a number"),
    ("name=a top_k=0", "top_k must be an integer in 1..100000, not 0"),
    ('{"seed": 7.5}', "seed must be an integer in 0..4294967295, not 7.5"),
    ("name=a seed=4294967296", "seed must be an integer in 0..4294967295"),
    ('{"seed": ' + "9" * 400 + "}", "seed must be an integer in 0..4294967295, not 9999"),
    ('{"temperature": ' + "9" * 400 + "}", "temperature must be a number in 0..2, not 9999"),
    ('{"top_k": 1e999}', "top_k must be an integer in 1..100000, not inf"),
    ("name=a temperature=1e999", "temperature must be a number in 0..2, not inf"),
    ("name=a presence_penalty=-3", "presence_penalty must be a number in -2..2"),
    ('{"frequency_penalty": "1"}', "frequency_penalty must be a number in -2..2, not '1'"),
    ("name=a stop=", "each stop string must be text of 1..256 bytes"),
    ("name=a stop=a||b", "each stop string must be text of 1..256 bytes"),
    ("name=a stop=a|b|c|d|e", "stop must be a list of at most 4 strings"),
    ('{"stop": [1]}', "each stop string must be text of 1..256 bytes, not 1"),
    ('{"stop": "\\u0007"}', "may hold no control characters but newline and tab"),
    ('{"temperature": 0, "temperature": 1}', "key 'temperature' given twice"),
    ("name=a seed=1 seed=2", "key 'seed' given twice"),
])
def test_bad_values_are_einval_naming_the_range(line, reason):
    """A value out of range or of the wrong kind is EINVAL whose reason names the key and its range."""
    with pytest.raises(Invalid) as caught:
        parse_submit(line)
    assert caught.value.errno == errno.EINVAL and reason in caught.value.reason


STOP_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="|", exclude_categories=["C", "Z"])
                    | st.sampled_from(" \t\n"), min_size=1, max_size=8)
SAMPLINGS = st.builds(
    Sampling, temperature=st.none() | st.floats(0, 2), top_p=st.none() | st.floats(0, 1),
    top_k=st.none() | st.integers(1, 100_000), seed=st.none() | st.integers(0, 2**32 - 1),
    stop=st.lists(STOP_TEXT, max_size=4), presence_penalty=st.none() | st.floats(-2, 2),
    frequency_penalty=st.none() | st.floats(-2, 2))


@given(SAMPLINGS)
def test_any_sampling_reads_back_from_its_text(sampling):
    """Whatever the values (full float precision, blanks and quotes in stop strings), the text parses back equal."""
    line = "name=a " + (sampling.text if sampling.fields else "")  # none set: the text is `-`
    assert (parse_submit(line).sampling or Sampling()) == sampling


def test_text_reads_back_as_the_same_record():
    """Sampling.text is the key=value form: parsed again it gives the same record."""
    assert SET.text == 'temperature=0 top_p=0.9 top_k=40 seed=7 stop="###|\\n" presence_penalty=-0.5 ' \
                       'frequency_penalty=1.5'
    assert parse_submit("name=a " + SET.text).sampling == SET
    assert Sampling().text == "-"


# -- journal and status ------------------------------------------------------------------------------


def test_submit_with_sampling_round_trips_through_the_journal_codec():
    """A Submit's sampling comes back equal from its journal row, stop strings as a tuple."""
    event = Submit(spec=TaskSpec(name="a", prompt="p", sampling=SET), uid=3)
    assert from_row(*to_row(event)) == event


def test_an_old_journal_row_without_sampling_still_loads():
    """A submit journaled before sampling existed loads with none set."""
    body = ('{"uid":3,"caller_pid":0,"caller_tenant":null,"spec":{"name":"a","max_tokens":9,"prio":5,"model":null,'
            '"tenant":null,"deadline_us":null,"prompt":"","parent":null},"note":""}')
    assert from_row("submit", body).spec == TaskSpec(name="a", max_tokens=9)


def test_sampling_survives_a_restart_and_shows_in_status(tmp_path):
    """Reopened on its journal, the runtime's task has its sampling, and status shows it; '-' when none."""
    with open_runtime(tmp_path) as rt:
        rt.commit([Submit(spec=TaskSpec(name="a", sampling=Sampling(temperature=0.0, seed=7)), uid=1000),
                   Submit(spec=TaskSpec(name="b"), uid=1000)])
    with open_runtime(tmp_path) as rt:
        rt.recover()
        shown = [dict(line.split(":\t", 1) for line in status(rt.kernel.tasks[pid]).splitlines()) for pid in (1, 2)]
    assert [fields["Sampling"] for fields in shown] == ["temperature=0 seed=7", "-"]


# -- policy ------------------------------------------------------------------------------------------


def test_max_temperature_parses_to_canonical_text_and_refuses_out_of_range():
    """max_temperature=X is a limit (0..2, decimals), written back last and without trailing zeros."""
    assert parse_rule("limit tenant=a max_temperature=0.50 max_tokens=9").text == \
        "limit tenant=a max_tokens=9 max_temperature=0.5"
    for bad, reason in (("limit max_temperature=3", "expected a number 0..2"),
                        ("limit max_temperature=-1", "expected a number 0..2"),
                        ("deny max_temperature=1", "only a limit rule takes")):
        with pytest.raises(Invalid, match=reason):
            parse_rule(bad)


@pytest.mark.parametrize("asked,bound,clamped", [(1.5, 0.5, 0.5), (0.2, 0.5, 0.2), (None, 0.5, 0.5),
                                                 (None, 1.5, None), (1.8, 1.5, 1.5)])
def test_max_temperature_lowers_and_an_unset_one_counts_as_one(asked, bound, clamped):
    """A limit lowers a temperature above it; unset counts as 1.0, so only a bound below 1 sets it."""
    request = Request(tenant="a", model="m", tokens=5, prio=5, uid=0, minute=0, temperature=asked)
    assert evaluate([parse_rule(f"limit max_temperature={bound}")], request).temperature == clamped


def test_policy_clamps_the_submitted_temperature_and_says_so():
    """Admission applies max_temperature to the task's sampling, keeping its other keys, with a limit note."""
    kernel = Kernel(config())
    kernel.apply(SetRules(rules=("limit max_temperature=0.3",)), 0)
    pid = admit(kernel, sampling=Sampling(temperature=1.2, seed=4))
    assert kernel.tasks[pid].spec.sampling == Sampling(temperature=0.3, seed=4)
    unset = admit(kernel)
    assert kernel.tasks[unset].spec.sampling == Sampling(temperature=0.3)
    notes = [row["detail"] for row in trace_rows(kernel) if row["type"] == "limit"]
    assert "temperature 1.2 -> 0.3" in notes[0] and "temperature unset -> 0.3" in notes[1]


# -- drivers -----------------------------------------------------------------------------------------


def test_sim_text_is_the_same_for_one_seed_and_differs_for_another():
    """The sim's words follow the task's seed: same seed and prompt, same text; another seed, other text."""
    driver = sim.SimDriver({"m": type("Model", (), {"options": {}})})

    def text(seed):
        spec = TaskSpec(name="a", prompt="p", sampling=Sampling(seed=seed) if seed is not None else None)
        return "".join(sim._next_word(driver.engines["m"], task_of(spec, tokens_out=n)) for n in range(20))
    assert text(7) == text(7) != text(8)
    assert text(None) == text(0)  # the model's seed option, 0 by default


def test_openai_request_carries_the_sampling_keys():
    """The completions body holds every set sampling key under its own name, stop as a list; none when unset."""
    endpoint = openai.Endpoint(url="http://e:1", engine_model="m")
    _, body = endpoint.request(task_of(TaskSpec(name="a", max_tokens=8, sampling=SET)))
    assert {key: body[key] for key in SET.fields} == {
        "temperature": 0.0, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["###", "\n"],
        "presence_penalty": -0.5, "frequency_penalty": 1.5}
    _, plain = endpoint.request(task_of(TaskSpec(name="a")))
    assert not set(SET.fields) & set(plain)


async def test_openai_driver_sends_them_over_http_and_none_for_a_plain_task(tmp_path, nursery):
    """Through a Runtime and a fake engine on 127.0.0.1, the streamed request of a task with sampling keys
    carries them; a task without keeps the engine's defaults."""
    engine = await FakeEngine().start(nursery)
    await run_tasks(tmp_path, engine.port, [{"name": "s", "max_tokens": 2, "sampling": SET},
                                            {"name": "p", "max_tokens": 2}])
    bodies = {body["prompt"]: body for body in engine.bodies}
    assert {key: bodies["s"][key] for key in SET.fields} == SET.fields
    assert not set(SET.fields) & set(bodies["p"])


def test_triton_request_names_seed_and_stop_as_the_ensemble_does_and_beats_extra():
    """Triton gets random_seed and stop_words; a task's temperature overrides the model's extra one."""
    endpoint = triton.TritonEndpoint(url="http://e:1", engine_model="ensemble", extra={"temperature": 0.9})
    _, body = endpoint.request(task_of(TaskSpec(name="a", sampling=Sampling(temperature=0.1, seed=7, stop="x"))))
    assert (body["temperature"], body["random_seed"], body["stop_words"]) == (0.1, 7, ["x"])
    assert "seed" not in body and "stop" not in body


def test_llamacpp_generation_gets_the_sampling_and_the_seed():
    """Llama.generate gets temp/top_p/top_k/penalties; the engine sets the task's seed, else the model's."""
    fake = FakeLlama(script=[1 + ord("a"), 0])
    engine = llamacpp.Engine(llamacpp.Options(model_path="m.gguf", n_ctx=64, seed=5))
    engine.llama = fake
    for spec in (TaskSpec(name="a", sampling=SET), TaskSpec(name="b")):
        assert engine._generate(llamacpp.Job.of(task_of(spec)), threading.Event(), lambda chunk: None) is None
    assert fake.samplings == [{"temp": 0.0, "top_p": 0.9, "top_k": 40, "presence_penalty": -0.5,
                               "frequency_penalty": 1.5}, {}]
    assert fake.seeds == [7, 5]


def test_llamacpp_stop_string_ends_the_text_before_it():
    """A stop string spread over tokens ends the task done; the text stops before it, nothing of it shown."""
    script = [1 + byte for byte in b"ab#c##x#"]
    chunks = []
    job = llamacpp.Job(7, b"p", 20, stop=("##",))
    llamacpp.generate(FakeLlama(script=script), job, threading.Event(), chunks.append)
    assert "".join(chunk.text for chunk in chunks) == "ab#c" and chunks[-1].final
    assert sum(chunk.tokens for chunk in chunks) == 6


def test_stop_scan_holds_back_only_what_may_begin_a_stop_string():
    """Text that cannot begin a stop string goes out at once; a held prefix goes out when it turns out not to be one."""
    scan = llamacpp.StopScan(("END",))
    assert [scan.feed(text) for text in ("the E", "N", "d E")] == ["the ", "", "ENd "]
    assert (scan.flush(), scan.hit) == ("E", False)

