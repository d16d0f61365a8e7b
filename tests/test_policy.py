"""Tier 1: policy rules (kernel/policy.py) - parsing, canonical text, refusals and evaluation.

Pure: no kernel, no FUSE. The property tests build rules as text from a structure,
and check evaluate() against a reference evaluator below that reads that structure
directly, sharing nothing with policy.py but the Request and Decision records.
"""
import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.policy import Decision, Request, evaluate, parse_rule

PROPERTY = settings(deadline=None, max_examples=400)


def request(tenant="alice", model="small", tokens=500, prio=5, uid=1000, minute=720) -> Request:
    """A request with every field defaulted, so that each test names only what it varies."""
    return Request(tenant=tenant, model=model, tokens=tokens, prio=prio, uid=uid, minute=minute)


def decide(lines: list[str], **fields) -> Decision:
    """evaluate() of the rules written as `lines` for request(**fields)."""
    return evaluate([parse_rule(line) for line in lines], request(**fields))


# -- parsing and canonical text ------------------------------------------------------------

CANONICAL = [
    ("deny model=big tenant!=research", "deny model=big tenant!=research"),
    ("DENY   model=big\ttenant!=research ", "deny model=big tenant!=research"),
    ("Allow", "allow"),
    ("allow time=9:05-17:00", "allow time=09:05-17:00"),
    ("deny time=22:00-06:00 uid=0,1000", "deny time=22:00-06:00 uid=0,1000"),
    ("deny tokens>=0100 tokens<1000", "deny tokens>=100 tokens<1000"),
    ("deny prio=1 prio!=2", "deny prio=1 prio!=2"),
    ("deny tokens>5 prio<=3 tokens<=9 prio>0", "deny tokens>5 prio<=3 tokens<=9 prio>0"),
    ("limit tenant=bob,carol max_tokens=500", "limit tenant=bob,carol max_tokens=500"),
    ("LIMIT max_prio=3 max_tokens=10", "limit max_tokens=10 max_prio=3"),
    ("deny tenant=* model!=a.b_c-1", "deny tenant=* model!=a.b_c-1"),
]


@pytest.mark.parametrize("line,text", CANONICAL)
def test_canonical_text(line, text):
    """A rule's text has a lower-case action, single blanks, plain numbers and zero-padded times."""
    assert parse_rule(line).text == text


@pytest.mark.parametrize("line,text", CANONICAL)
def test_canonical_text_parses_to_an_equal_rule(line, text):
    """Writing back what a read shows gives the same rule (writes mirror reads)."""
    assert parse_rule(text) == parse_rule(line)


def test_conditions_keep_their_order():
    """Two rules with the same conditions in another order print differently and compare unequal."""
    first, second = parse_rule("deny tenant=a model=b"), parse_rule("deny model=b tenant=a")
    assert (first.text, second.text) == ("deny tenant=a model=b", "deny model=b tenant=a")
    assert first != second


# -- refusals ------------------------------------------------------------------------------

REFUSALS = [
    ("", "empty"),
    ("   ", "empty"),
    ("permit tenant=a", "'permit'"),
    ("# a comment", "'#'"),
    ("déný", "'déný'"),
    ("deny tenant", "'tenant'"),
    ("deny tokens 5", "'tokens'"),
    ("deny colour=red", "'colour'"),
    ("deny Tenant=a", "'Tenant'"),
    ("deny tenant<a", "'tenant<a'"),
    ("deny tenant=", "'tenant='"),
    ("deny tenant=a,,b", "'tenant=a,,b'"),
    ("deny tenant=a/b", "'a/b'"),
    ("deny model=" + "m" * 65, "'" + "m" * 39),
    ("deny tokens>=x", "'x'"),
    ("deny tokens>-5", "'-5'"),
    ("deny tokens=+5", "'+5'"),
    ("deny tokens=٣", "'٣'"),
    ("deny tokens=10000001", "'10000001'"),
    ("deny tokens=" + "9" * 5000, "'" + "9" * 39),
    ("deny prio>10", "'10'"),
    ("deny prio=>5", "'>5'"),
    ("deny prio!5", "'prio!5'"),
    ("deny time=09:00-09:00", "'09:00-09:00'"),
    ("deny time=24:00-01:00", "'24:00'"),
    ("deny time=09:60-10:00", "'09:60'"),
    ("deny time=0900-1000", "'0900'"),
    ("deny time=09:00", "'09:00'"),
    ("deny time!=09:00-10:00", "'time!=09:00-10:00'"),
    ("deny uid=1,x", "'x'"),
    ("deny uid=4294967296", "'4294967296'"),
    ("deny uid!=0", "'uid!=0'"),
    ("deny tenant=a tenant!=b", "'tenant!=b'"),
    ("deny uid=1 uid=2", "'uid=2'"),
    ("deny tokens>1 tokens<9 tokens!=5", "'tokens!=5'"),
    ("deny max_tokens=5", "'max_tokens=5'"),
    ("allow tenant=a max_prio=1", "'max_prio=1'"),
    ("limit tenant=a", "max_tokens=N"),
    ("limit max_tokens=0", "'0'"),
    ("limit max_prio=10", "'10'"),
    ("limit max_tokens<5", "'max_tokens<5'"),
    ("limit max_tokens=5 max_tokens=6", "'max_tokens=6'"),
    ("limit max_tokens=5 tenant=a", "'tenant=a'"),
]


@pytest.mark.parametrize("line,named", REFUSALS)
def test_refusals_name_the_bad_token(line, named):
    """Each malformed rule is EINVAL with a reason that quotes the offending token."""
    with pytest.raises(Invalid) as caught:
        parse_rule(line)
    assert caught.value.errno == errno.EINVAL
    assert named in caught.value.reason


# -- evaluation ----------------------------------------------------------------------------


def test_no_rules_allow_unchanged():
    """Without a matching rule the request is allowed as it is, by no rule."""
    assert decide(["deny tenant=bob"], tokens=700, prio=8) == Decision(
        allowed=True, rule=None, text=None, max_tokens=700, prio=8)


def test_first_match_wins():
    """The first matching rule decides even when a later one matches too; earlier misses are skipped."""
    rules = ["deny tenant=bob", "allow model=small", "deny"]
    assert decide(rules) == Decision(allowed=True, rule=2, text="allow model=small", max_tokens=500, prio=5)
    assert decide(rules, tenant="bob").rule == 1
    assert decide(rules, model="big") == Decision(allowed=False, rule=3, text="deny", max_tokens=500, prio=5)


def test_denial_reason_names_rule_and_text():
    """A denial's reason gives the rule's 1-based number and its canonical text."""
    rules = ["allow tenant=research", "deny uid=0", "DENY  model=big tenant!=research"]
    decision = decide(rules, model="big")
    assert decision.reason == "denied by policy rule 3: deny model=big tenant!=research"


def test_other_reasons():
    """An allow, a limit and no match each say so in the reason."""
    assert decide(["allow"]).reason == "allowed by policy rule 1: allow"
    assert decide(["limit max_prio=2"]).reason == "limited by policy rule 1: limit max_prio=2"
    assert decide([]).reason == "allowed: no policy rule matched"


def test_names_lists_and_any():
    """A name list matches any of its names, `*` matches every name, `!=*` none."""
    assert decide(["deny tenant=bob,alice"]).rule == 1
    assert decide(["deny tenant=bob,carol"]).rule is None
    assert decide(["deny model=*"]).rule == 1
    assert decide(["deny model!=*"]).rule is None
    assert decide(["deny model!=big,huge"]).rule == 1


def test_uid_list():
    """uid=N,M matches exactly those submitters."""
    assert [decide(["deny uid=0,1000"], uid=uid).allowed for uid in (0, 999, 1000)] == [False, True, False]


@pytest.mark.parametrize("tokens,denied", [(99, False), (100, True), (999, True), (1000, False)])
def test_token_range(tokens, denied):
    """tokens>=100 tokens<1000 holds from 100 up to 999 inclusive."""
    assert decide(["deny tokens>=100 tokens<1000"], tokens=tokens).allowed is not denied


@pytest.mark.parametrize("op,matching", [("=", [5]), ("!=", [4, 6]), ("<", [4]), ("<=", [4, 5]),
                                         (">", [6]), (">=", [5, 6])])
def test_prio_operators(op, matching):
    """Each comparison operator compares the request's prio with N."""
    assert [prio for prio in (4, 5, 6) if decide([f"deny prio{op}5"], prio=prio).rule] == matching


@pytest.mark.parametrize("window,minute,inside", [
    ("09:00-17:00", 539, False), ("09:00-17:00", 540, True), ("09:00-17:00", 1019, True),
    ("09:00-17:00", 1020, False), ("22:00-06:00", 1319, False), ("22:00-06:00", 1320, True),
    ("22:00-06:00", 1439, True), ("22:00-06:00", 0, True), ("22:00-06:00", 359, True),
    ("22:00-06:00", 360, False), ("22:00-06:00", 720, False), ("18:00-00:00", 1079, False),
    ("18:00-00:00", 1080, True), ("18:00-00:00", 1439, True), ("18:00-00:00", 0, False),
    ("00:00-00:01", 0, True), ("00:00-00:01", 1, False), ("23:59-00:00", 1439, True),
])
def test_time_windows(window, minute, inside):
    """A window holds from its start up to but not including its end, wrapping past midnight."""
    assert (decide([f"deny time={window}"], minute=minute).rule == 1) is inside


def test_limit_clamps_down_never_up():
    """A limit lowers max_tokens and prio to its bounds and leaves smaller values alone."""
    rules = ["limit tenant=alice max_tokens=100 max_prio=3"]
    assert decide(rules, tokens=500, prio=7) == Decision(
        allowed=True, rule=1, text=rules[0], max_tokens=100, prio=3)
    assert (decide(rules, tokens=50, prio=2).max_tokens, decide(rules, tokens=50, prio=2).prio) == (50, 2)


def test_limit_with_one_bound_keeps_the_other():
    """A limit with only max_prio leaves max_tokens as requested, and the reverse."""
    assert (decide(["limit max_prio=1"], tokens=900, prio=9).max_tokens,
            decide(["limit max_prio=1"], tokens=900, prio=9).prio) == (900, 1)
    assert (decide(["limit max_tokens=8"], tokens=900, prio=9).max_tokens,
            decide(["limit max_tokens=8"], tokens=900, prio=9).prio) == (8, 9)


def test_deny_keeps_requested_values():
    """A denial reports the request's own max_tokens and prio."""
    assert decide(["deny"], tokens=321, prio=4) == Decision(
        allowed=False, rule=1, text="deny", max_tokens=321, prio=4)


# -- generated rules -----------------------------------------------------------------------
# A rule spec is (action, conds, limits): conds a list of (key, op, value), limits a dict
# {'max_tokens': N, 'max_prio': N}. Values: a tuple of names, an int, a tuple of uids, or
# a (start, end) pair of minutes for time.

TENANTS = ("alice", "bob", "r.d-2", "_")
MODELS = ("big", "small", "m.1")
ALL_OPS = ("=", "!=", "<", "<=", ">", ">=")
KEY_OPS = {"tenant": ("=", "!="), "model": ("=", "!="), "tokens": ALL_OPS, "prio": ALL_OPS,
           "time": ("=",), "uid": ("=",)}
TIMES_ALLOWED = {"tokens": 2, "prio": 2}


def names(pool):
    """Non-empty name lists from `pool` and `*`."""
    return st.lists(st.sampled_from(pool + ("*",)), min_size=1, max_size=3).map(tuple)


@st.composite
def windows(draw):
    """A (start, end) pair of distinct minutes of the day."""
    start = draw(st.integers(0, 1439))
    end = draw(st.integers(0, 1439).filter(lambda minute: minute != start))
    return start, end


VALUES = {
    "tenant": names(TENANTS),
    "model": names(MODELS),
    "tokens": st.integers(0, 14) | st.just(10_000_000),
    "prio": st.integers(0, 9),
    "time": windows(),
    "uid": st.lists(st.integers(0, 3) | st.just(2**32 - 1), min_size=1, max_size=3).map(tuple),
}


@st.composite
def conds(draw):
    """Conditions with each key at most as often as the grammar allows."""
    keys = draw(st.lists(st.sampled_from(sorted(KEY_OPS)), max_size=4))
    kept = [key for index, key in enumerate(keys) if keys[:index + 1].count(key) <= TIMES_ALLOWED.get(key, 1)]
    return [(key, draw(st.sampled_from(KEY_OPS[key])), draw(VALUES[key])) for key in kept]


@st.composite
def limits(draw):
    """One or both limit bounds."""
    chosen = draw(st.sampled_from([("max_tokens",), ("max_prio",), ("max_tokens", "max_prio")]))
    bounds = {"max_tokens": st.integers(1, 14) | st.just(10_000_000), "max_prio": st.integers(0, 9)}
    return {key: draw(bounds[key]) for key in chosen}


@st.composite
def rule_specs(draw):
    """(action, conds, limits) with limits exactly for limit rules."""
    action = draw(st.sampled_from(("deny", "allow", "limit")))
    return action, draw(conds()), draw(limits()) if action == "limit" else {}


def clock(minute: int, padded: bool = True) -> str:
    """Minute of the day as HH:MM, or H:MM when not padded."""
    hours = f"{minute // 60:02d}" if padded else str(minute // 60)
    return f"{hours}:{minute % 60:02d}"


def value_text(key, value, padded=True) -> str:
    """A condition value as written in a rule."""
    if key == "time":
        return f"{clock(value[0], padded)}-{clock(value[1], padded)}"
    if key in ("tokens", "prio"):
        return str(value)
    return ",".join(str(item) for item in value)


def spec_text(spec, padded=True, case=str.lower, blank=" ") -> str:
    """The rule line of a spec: canonical with the defaults, else with the given spelling."""
    action, rule_conds, rule_limits = spec
    words = [case(action)] + [f"{key}{op}{value_text(key, value, padded)}" for key, op, value in rule_conds]
    words += [f"{key}={rule_limits[key]}" for key in ("max_tokens", "max_prio") if key in rule_limits]
    return blank.join(words)


def reference_holds(key, op, value, req: Request) -> bool:
    """Whether one condition holds for a request, straight from the grammar's definitions."""
    if key in ("tenant", "model"):
        named = "*" in value or (req.tenant if key == "tenant" else req.model) in value
        return named if op == "=" else not named
    if key == "uid":
        return req.uid in value
    if key == "time":
        start, end = value
        return start <= req.minute < end if start < end else not end <= req.minute < start
    actual = req.tokens if key == "tokens" else req.prio
    return {"=": actual == value, "!=": actual != value, "<": actual < value, "<=": actual <= value,
            ">": actual > value, ">=": actual >= value}[op]


def reference_decision(specs, req: Request) -> Decision:
    """The first spec whose conditions all hold decides; limits clamp; no match allows."""
    for number, spec in enumerate(specs, start=1):
        action, rule_conds, rule_limits = spec
        if all(reference_holds(key, op, value, req) for key, op, value in rule_conds):
            return Decision(allowed=action != "deny", rule=number, text=spec_text(spec),
                            max_tokens=min(req.tokens, rule_limits.get("max_tokens", req.tokens)),
                            prio=min(req.prio, rule_limits.get("max_prio", req.prio)))
    return Decision(allowed=True, rule=None, text=None, max_tokens=req.tokens, prio=req.prio)


@st.composite
def policies_and_requests(draw):
    """Up to five rules and a request whose minute is often at or next to a window's edge."""
    specs = draw(st.lists(rule_specs(), max_size=5))
    edges = [edge + shift for _a, rule_conds, _l in specs for key, _op, value in rule_conds if key == "time"
             for edge in value for shift in (-1, 0)]
    near_edge = st.sampled_from([edge % 1440 for edge in edges] or [0])
    minute = draw(st.one_of(st.integers(0, 1439), near_edge, near_edge))
    req = Request(tenant=draw(st.sampled_from(TENANTS)), model=draw(st.sampled_from(MODELS)),
                  tokens=draw(st.integers(1, 15)), prio=draw(st.integers(0, 9)),
                  uid=draw(st.integers(0, 4)), minute=minute)
    return specs, req


@PROPERTY
@given(policies_and_requests())
def test_evaluate_agrees_with_reference(case):
    """For random rule sets and requests, evaluate() decides exactly as the reference evaluator."""
    specs, req = case
    assert evaluate([parse_rule(spec_text(spec)) for spec in specs], req) == reference_decision(specs, req)


@st.composite
def conditions_and_requests(draw):
    """One condition of any key and operator, and a request at or next to a time window's edges."""
    key = draw(st.sampled_from(sorted(KEY_OPS)))
    cond = (key, draw(st.sampled_from(KEY_OPS[key])), draw(VALUES[key]))
    edges = [(edge + shift) % 1440 for edge in cond[2] for shift in (-1, 0)] if key == "time" else [720]
    req = Request(tenant=draw(st.sampled_from(TENANTS)), model=draw(st.sampled_from(MODELS)),
                  tokens=draw(st.integers(1, 15)), prio=draw(st.integers(0, 9)),
                  uid=draw(st.integers(0, 4)), minute=draw(st.sampled_from(edges)))
    return cond, req


@PROPERTY
@given(conditions_and_requests())
def test_each_condition_agrees_with_reference(case):
    """A rule of one generated condition matches exactly when the reference says the condition holds."""
    cond, req = case
    expected = 1 if reference_holds(*cond, req) else None
    assert evaluate([parse_rule(spec_text(("deny", [cond], {})))], req).rule == expected


@PROPERTY
@given(rule_specs(), st.booleans(), st.sampled_from([str.lower, str.upper, str.title]),
       st.sampled_from([" ", "  ", "\t", " \t "]))
def test_generated_rules_round_trip(spec, padded, case, blank):
    """Any spelling of a generated rule prints as its canonical text, which parses to an equal rule."""
    rule = parse_rule(blank + spec_text(spec, padded, case, blank) + blank)
    assert rule.text == spec_text(spec)
    assert parse_rule(rule.text) == rule


GRAMMAR_ALPHABET = "denyallowlimit DENY tenantmodeltokensprioimeuid max_ =!<>,:-*0123456789.#\t/٣é"
FRAGMENTS = st.sampled_from(["deny", "allow", "limit", "tenant", "model", "tokens", "prio", "time",
                             "uid", "max_tokens", "max_prio", "=", "!=", "<", "<=", ">", ">=", ",",
                             "*", "09:00", "-", "23:59", "0", "5", "10000001", " ", "\t", "\x00"])


@st.composite
def mangled_rules(draw):
    """A generated rule's text with up to three characters replaced by up to three others."""
    text = spec_text(draw(rule_specs()))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 3)))
    return text[:start] + draw(st.text(alphabet=GRAMMAR_ALPHABET, max_size=3)) + text[end:]


@PROPERTY
@given(st.text() | st.text(alphabet=GRAMMAR_ALPHABET) | st.lists(FRAGMENTS).map("".join) | mangled_rules())
def test_garbage_parses_or_is_invalid(line):
    """Any line either parses to a rule that survives its own text, or raises Invalid, nothing else."""
    try:
        rule = parse_rule(line)
    except Invalid as refusal:
        assert refusal.reason
        return
    assert parse_rule(rule.text) == rule
