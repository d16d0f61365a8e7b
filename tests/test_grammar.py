"""Tier 1: the ctl grammar (kernel/grammar.py, kernel/spec.py) — the three submit forms,
durations, task ctl and pid lines, and every refusal with its errno class.

Pure: no kernel, no FUSE. Whether a model or tenant exists is the kernel's question and is
tested in test_kernel.py.
"""
import errno

import pytest

from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.grammar import parse_duration_us, parse_pid, parse_submit, parse_task_command
from apeinxfs.kernel.spec import TaskCommand, TaskSpec


def refused(line: str, parse=parse_submit) -> Invalid:
    """The Invalid that `parse(line)` raises, checked to carry EINVAL."""
    with pytest.raises(Invalid) as caught:
        parse(line)
    assert caught.value.errno == errno.EINVAL
    return caught.value


# -- the seed form --------------------------------------------------------------------------


def test_seed_form():
    """`job1 1000 5` gives name, tokens and prio with the other fields at their defaults."""
    assert parse_submit("job1 1000 5") == TaskSpec(name="job1", max_tokens=1000, prio=5)


def test_seed_form_with_deadline():
    """A fourth field is the deadline, a bare number meaning seconds."""
    assert parse_submit("  job1 10 9 30  ").deadline_us == 30_000_000


@pytest.mark.parametrize("line", ["job1", "job1 10", "job1 10 5 30s extra", "job1 ten 5", "job1 10 high",
                                  "job1 10 5 soon", "job1 1e3 5"])
def test_seed_form_refusals(line):
    """Wrong field counts and non-integer fields are EINVAL."""
    refused(line)


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,micros", [("30", 30_000_000), ("30s", 30_000_000), ("500ms", 500_000),
                                         ("2m", 120_000_000), ("1.5h", 5_400_000_000), ("250us", 250)])
def test_durations(text, micros):
    """Every duration form of docs/apeinxfs.5.md converts to microseconds."""
    assert parse_duration_us(text) == micros


@pytest.mark.parametrize("text", ["", "0", "-5s", "5w", "s", "30 s", "1e3s"])
def test_bad_durations(text):
    """Zero, negative, unitless garbage and unknown units are EINVAL."""
    refused(text, parse_duration_us)


def test_deadline_over_thirty_days_is_refused():
    """A deadline beyond the 30-day cap is out of range."""
    refused("job1 10 5 1000h")


# -- key=value -------------------------------------------------------------------------------


def test_key_value_form():
    """Every key of the man page's key=value form lands in its field."""
    spec = parse_submit('name=job1 max_tokens=64 prio=7 model=M tenant=T deadline=500ms prompt="hi"')
    assert spec == TaskSpec(name="job1", max_tokens=64, prio=7, model="M", tenant="T",
                            deadline_us=500_000, prompt="hi")


def test_key_value_defaults():
    """Omitted keys take the defaults: name `task`, 256 tokens, prio 5, tenant default."""
    assert parse_submit("max_tokens=8") == TaskSpec(name="task", max_tokens=8)


def test_quoted_escapes():
    """Quoted values decode \\n \\t \\" \\\\ and keep spaces and equals signs."""
    spec = parse_submit(r'prompt="a b=c\n\t\"q\" \\x" name=j')
    assert spec.prompt == 'a b=c\n\t"q" \\x'
    assert spec.name == "j"


def test_empty_quoted_prompt():
    """An empty quoted value is an empty prompt, not an error."""
    assert parse_submit('name=j prompt=""').prompt == ""


@pytest.mark.parametrize("line,words", [
    ("name=j colour=red", "unknown key"),
    ("name=j name=k", "twice"),
    ('name=j prompt="open', "unterminated"),
    (r'name=j prompt="bad \x escape"', "escape"),
    ('name=j prompt="a"b', "closing quote"),
    ('name=j prompt=a"b', "stray quote"),
    ("name=j 10", "key=value"),
    ("name=j prio=", "integer"),
    ("=5 name=j", "unknown key"),
])
def test_key_value_refusals(line, words):
    """Unknown keys, duplicates, broken quotes and escapes are EINVAL with a reason that says so."""
    assert words in refused(line).reason


# -- JSON -----------------------------------------------------------------------------------


def test_json_form():
    """One JSON object, with a numeric deadline in seconds."""
    spec = parse_submit('{"name": "job1", "prompt": "x\\ny", "max_tokens": 64, "prio": 5, "deadline": 1.5}')
    assert spec == TaskSpec(name="job1", prompt="x\ny", max_tokens=64, prio=5, deadline_us=1_500_000)


def test_json_duration_string_deadline():
    """A JSON deadline may also be a duration string."""
    assert parse_submit('{"deadline": "2m"}').deadline_us == 120_000_000


@pytest.mark.parametrize("line", [
    '{"name": "j", "max_tokens": true}',
    '{"name": "j", "prio": false}',
    '{"name": "j", "deadline": true}',
    '{"name": "j", "max_tokens": 64.0}',
    '{"name": 5}',
    '{"name": "j", "prompt": ["x"]}',
    '{"name": "j", "deadline": null}',
    '{"name": "j", "gpu": 1}',
    '{"name": "j", "deadline_us": 5}',
    '{"name": "a", "name": "b"}',
    '{"name": "j"',
    '{"name": "j"} {}',
])
def test_json_refusals(line):
    """Bools for numbers, wrong types, unknown or repeated keys and broken JSON are EINVAL."""
    refused(line)


@pytest.mark.parametrize("line, words", [('{"name": "j", "max_tokens": ' + "9" * 5000 + "}", "a number of over 4300 digits"),
                                         ('{"a": ' * 100_000, "nested too deep")])
def test_json_too_big_to_read_is_refused_in_words_of_its_own(line, words):
    """A number of thousands of digits or JSON nested past Python's limit is EINVAL in words that name the
    line's fault, not Python's internals (sys.set_int_max_str_digits, recursion depth)."""
    with pytest.raises(Invalid) as refusal:
        parse_submit(line)
    assert refusal.value.reason == f"bad JSON: {words}"


def test_json_array_is_refused():
    """A JSON array is not a submit form."""
    refused('[{"name": "j"}]')


# -- ranges and names -----------------------------------------------------------------------


@pytest.mark.parametrize("line", ["j 0 5", "j 10000001 5", "j 10 10", "j 10 -1", "j 10 5 0"])
def test_out_of_range_numbers(line):
    """Tokens 1..10,000,000, prio 0..9 and positive deadlines are enforced."""
    refused(line)


def test_range_edges_are_accepted():
    """The edges of each range are inside it."""
    assert parse_submit("j 1 0").prio == 0
    assert parse_submit("j 10000000 9").max_tokens == 10_000_000


@pytest.mark.parametrize("line", ['name="a b"', 'name="a/b"', "name=" + "n" * 65, 'tenant=""',
                                  'model="x\\ty"', "tenant=a,b"])
def test_bad_names(line):
    """Names with spaces, slashes, commas or control characters, empty or over 64 chars are EINVAL."""
    refused(line)


def test_blank_line_is_refused_not_crashed():
    """A blank submit line is EINVAL, never an IndexError."""
    refused("   ")


# -- task ctl and pid lines -------------------------------------------------------------------


@pytest.mark.parametrize("line,command", [("kill", TaskCommand("kill")), ("stop", TaskCommand("stop")),
                                          ("cont", TaskCommand("cont")), (" prio 9 ", TaskCommand("prio", 9))])
def test_task_commands(line, command):
    """kill | stop | cont | prio N parse to their command."""
    assert parse_task_command(line) == command


@pytest.mark.parametrize("line", ["", "prio", "prio 10", "prio x", "kill 3", "stop now", "nice 5", "prio 1 2"])
def test_task_command_refusals(line):
    """Unknown verbs, missing or extra arguments and out-of-range prio are EINVAL."""
    refused(line, parse_task_command)


def test_pid_lines():
    """A kill line is one positive integer."""
    assert parse_pid(" 42 ") == 42
    for line in ("", "0", "-3", "+5", "4 5", "x", "1" * 13, "\u0665"):
        refused(line, parse_pid)


def test_a_root_task_that_names_no_tenant_gets_the_one_given():
    """parse_submit's tenant goes to a task that names none and has no parent, in all three forms."""
    assert parse_submit("job1 10 5", "t1").tenant == "t1"
    assert parse_submit("name=j tenant=t2", "t1").tenant == "t2"
    assert parse_submit('{"name": "j", "tenant": null}', "t1").tenant == "t1"
    assert parse_submit("name=j parent=7", "t1").tenant is None
    assert parse_submit('{"name": "j", "parent": 7}', "t1").tenant is None
