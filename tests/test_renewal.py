"""Files read again once they change (cluster/renewal.py), through the peers' token file (peer_wire.token_file).

Pure tier: real files, time passed in (a fake clock): an edit is seen at the first look CHECK_S after
the last, never sooner but by `check`; unchanged files are not read again; an edit that does not load
(world-readable, empty, a bad token) is not taken, the tokens before stay, the reason is shown and
logged once per distinct reason; the mended file is taken at the next look. The etcd client's TLS
files, the other user of the class, are tests/test_etcd_renew.py's.
"""
import logging
import os

import pytest

from apeinxfs.cluster.etcd_auth import password_file
from apeinxfs.cluster.peer_wire import TOKEN_WORDING, read_tokens, token_file
from apeinxfs.cluster.renewal import CHECK_S, Renewable, stamp_of
from apeinxfs.kernel.errors import Invalid

KEPT = "the tokens loaded before stay in use"


def edit(path, text: bytes, mode: int = 0o600) -> None:
    """Write the token file aside and rename it in, as an operator's script (or an editor) does."""
    aside = f"{path}.new"
    with open(aside, "wb") as file:
        file.write(text)
    os.chmod(aside, mode)
    os.replace(aside, path)


@pytest.fixture
def path(tmp_path):
    """A token file holding `old`."""
    path = tmp_path / "token"
    edit(path, b"old\n")
    return path


def test_an_edit_is_seen_at_the_first_look_check_s_after_the_last_and_not_sooner(path):
    """An edit within CHECK_S of the last look is not seen (no stat per request); at CHECK_S it is taken."""
    tokens = token_file(str(path))
    assert tokens.current(100.0).accepted == (b"old",)
    edit(path, b"old\nnew\n")
    assert tokens.current(100.0 + CHECK_S / 2).accepted == (b"old",)
    assert tokens.current(100.0 + CHECK_S).accepted == (b"old", b"new") and tokens.state == "ok"


def test_check_looks_at_once(path):
    """`check` (a refused request's) looks at the file at once, however recent the last look."""
    tokens = token_file(str(path))
    tokens.current(100.0)
    edit(path, b"new\n")
    tokens.check(100.0 + CHECK_S / 10)
    assert tokens.current(100.0 + CHECK_S / 5).authorization == "Bearer new"


def test_unchanged_files_are_not_read_again(path):
    """Looks at files whose stamps did not change read nothing; a change is read once."""
    reads = []

    def read():
        reads.append(1)
        return read_tokens(str(path))

    tokens = Renewable.read_now((str(path),), read, TOKEN_WORDING)
    for second in range(1, 5):
        tokens.current(float(second))
    assert len(reads) == 1
    edit(path, b"new\n")
    for second in range(5, 9):
        tokens.current(float(second))
    assert len(reads) == 2 and tokens.value.accepted == (b"new",)


@pytest.mark.parametrize("text, mode, words", [(b"old\nnew\n", 0o644, "is readable by every user (mode 0644)"),
                                               (b"\n\n", 0o600, "is empty"),
                                               (b"old\nnew token\n", 0o600, "printable ASCII without spaces")])
def test_a_bad_edit_is_not_taken_said_once_and_the_mended_file_is_taken(path, caplog, text, mode, words):
    """An edit that does not load leaves the tokens before in use; the state says why, the log says it once
    over many looks; the file mended, it is taken at the next look and the state is ok again."""
    tokens = token_file(str(path))
    edit(path, text, mode)
    with caplog.at_level(logging.WARNING):
        for second in range(1, 6):
            assert tokens.current(float(second)).accepted == (b"old",)
    assert words in tokens.failure and tokens.state == f"not taken: {tokens.failure}; {KEPT}"
    assert len([record for record in caplog.records if words in record.getMessage()]) == 1
    edit(path, b"old\nnew\n")
    assert tokens.current(6.0).accepted == (b"old", b"new") and tokens.state == "ok" and tokens.failure is None


def test_a_second_distinct_failure_is_logged_again(path, caplog):
    """A failure with another reason than the one before is logged too."""
    tokens = token_file(str(path))
    with caplog.at_level(logging.WARNING):
        edit(path, b"\n")
        tokens.current(1.0)
        edit(path, b"newer\n", 0o644)  # not the loaded file's size: its inode may be reused, its mtime coarse
        tokens.current(2.0)
    assert [("empty" in message, "readable by every user" in message) for message in caplog.messages] == [
        (True, False), (False, True)]
    assert "readable by every user" in tokens.state


def test_a_file_turned_readable_by_every_user_without_an_edit_is_refused(path):
    """A chmod alone (the contents, inode and mtime as they were) is seen at the next look: the tokens stay,
    the state says why, as a daemon's start would refuse that file."""
    tokens = token_file(str(path))
    os.chmod(path, 0o644)
    while stamp_of(str(path)) == tokens.stamps[0]:  # a kernel of coarse timestamps: the next tick's chmod
        os.chmod(path, 0o644)
    assert tokens.current(1.0).accepted == (b"old",) and "readable by every user" in tokens.state


def test_a_missing_file_at_start_is_refused_and_a_fixed_value_looks_at_nothing(tmp_path):
    """A token file that is not there refuses the start (Invalid); a fixed value has no files and state -."""
    with pytest.raises(Invalid, match="No such file"):
        token_file(str(tmp_path / "absent"))
    fixed = Renewable.fixed("value")
    assert fixed.current(1e9) == "value" and fixed.state == "-" and fixed.paths == ()


def test_a_renewable_repr_never_shows_the_secret_it_holds(tmp_path):
    """A password file's Renewable, logged or in a traceback, shows its paths but not the password."""
    path = tmp_path / "password"
    path.write_text("hunter2-secret\n")
    path.chmod(0o600)
    shown = repr(password_file(str(path)))
    assert str(path) in shown and "hunter2-secret" not in shown
