"""Tier 1: `redacted` (kernel/endpoints.py), a hand scan in linear time, hides what the pattern it replaced hid.

`old_redacted` is that pattern (quadratic on a long run of scheme characters, `"a." * 40000`): the oracle. Texts
are built of URLs (a scheme after what may start a word or not, `://`, then pieces of an authority: `@`, `/?#`,
GPU indices after an `@`, which the pattern's lookahead keeps, spaces of any script) and of those pieces, then
compared.
"""
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apeinxfs import archive
from apeinxfs.kernel.endpoints import redacted

OLD_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@(?![0-9+]+(?:[,\s]|$))")
# what precedes a scheme: a word's start or not (`½`, `²`: `\w`, neither `\d` nor a letter; `²` is str.isdigit)
BEFORE = ["", " ", "_", "é", "٣", "½", "²", "x", "9", ".", "-", "+", "\n", "("]
SCHEMES = ["http", "https", "s3+x.y-z", "a", "Z9", "a.b", "-a", "9a"]
AUTHORITY = ["u", "u:p", "h:8000", "@", "@0", "@1+2", "@12", "@0a", ",", " ", "\t", "\n", "\xa0", "\u2028", "\x1c",
             "/", "?", "#", ":", "://", "é", "+", "_"]
PIECES = BEFORE + SCHEMES + AUTHORITY + ["endpoints=", "//"]
URL = st.tuples(st.sampled_from(BEFORE), st.sampled_from(SCHEMES), st.just("://"),
                st.lists(st.sampled_from(AUTHORITY), max_size=8).map("".join)).map("".join)
URLISH = st.lists(st.one_of(URL, st.sampled_from(PIECES)), max_size=10).map("".join)
LONG = 40_000  # pieces: 80 KB of "a.", which the pattern took seconds over


def old_redacted(text: str) -> str:
    return OLD_USERINFO.sub(r"\1***@", text)


@settings(max_examples=1500)
@given(st.one_of(URLISH, st.text(max_size=60), st.tuples(URLISH, st.text(max_size=8), URLISH).map("".join)))
@example("endpoints=http://u:p@h:1@0,http://v@h:2@1+2")
@example("http://a@bc@5://x@y")
@example("x_http://u@h é.http://u@h -ftp://u@h")
@example("http://u@1\n")
def test_redacted_hides_what_the_pattern_hid(text):
    """On URL-ish text and any text, `redacted` gives what the pattern gave."""
    assert redacted(text) == old_redacted(text)


@pytest.mark.parametrize("size", [8, LONG])
def test_long_runs_that_made_the_pattern_quadratic_are_read_alike(size):
    """Runs of scheme characters with no URL after them, schemes of thousands of characters, authorities of
    thousands of `@`: the same text with the same URL hidden, short (as the pattern read it) and at 80 KB."""
    cases = [("a." * size, "a." * size),
             ("a.b" * size + "://host/@x", "a.b" * size + "://host/@x"),
             ("a." * size + "a://u@h", "a." * size + "a://***@h"),
             ("http://u" + "@1" * size, "http://***@1@1"),
             ("http://" + "u@" * size, "http://***@"),
             ("http://" + "x" * size + " a@b", "http://" + "x" * size + " a@b")]
    for text, shown in cases:
        assert redacted(text) == shown
        if size < LONG:
            assert old_redacted(text) == shown


ARCHIVED_LINE = URLISH.map(lambda text: text.replace("\n", " ").encode("utf-8", "surrogateescape") + b"\n")


@settings(max_examples=500)
@given(st.lists(ARCHIVED_LINE, max_size=6))
def test_archived_lines_are_shown_alike_one_by_one_or_joined(lines):
    """`archive.shown` of archived lines joined is theirs one by one (whole_trace hides the older lines at once)."""
    assert archive.shown(b"".join(lines)) == b"".join(map(archive.shown, lines))
