"""Tier 4: scripts/link-apeinxfs (run by hand, when asked) touches the mount(8) link only where nobody else's
is; scripts/setup makes no link.

Each test of link-apeinxfs points APEINXFS_LINK into its own temporary directory, so the machine-wide
/usr/local/bin/apeinxfs is never touched here.
"""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINE = os.path.join(ROOT, ".venv", "bin", "apeinxfs")


def link_script(link) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(ROOT, "scripts", "link-apeinxfs")], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "APEINXFS_LINK": str(link)})


def test_an_absent_link_is_made_to_this_checkouts_program(tmp_path):
    """With no link there, it links this checkout's venv program and says so."""
    done = link_script(tmp_path / "apeinxfs")
    assert done.returncode == 0 and os.readlink(tmp_path / "apeinxfs") == MINE
    assert f"linked {tmp_path / 'apeinxfs'} -> {MINE}" in done.stdout


def test_a_link_already_this_checkouts_is_left_quietly(tmp_path):
    """A link that already runs this checkout's program stays, with nothing said."""
    os.symlink(MINE, tmp_path / "apeinxfs")
    done = link_script(tmp_path / "apeinxfs")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert os.readlink(tmp_path / "apeinxfs") == MINE


def test_another_checkouts_link_is_left_and_the_way_to_point_it_is_said(tmp_path):
    """A link to another program is not re-pointed; the message names it and the `ln -sfn` to run."""
    other = tmp_path / "other-checkout-apeinxfs"
    other.write_text("#!/bin/sh\n")
    os.symlink(other, tmp_path / "apeinxfs")
    done = link_script(tmp_path / "apeinxfs")
    assert done.returncode == 0 and os.readlink(tmp_path / "apeinxfs") == str(other)
    assert f"it runs {other}, not this checkout's" in done.stderr
    assert f"ln -sfn {MINE} {tmp_path / 'apeinxfs'}" in done.stderr


def test_a_file_of_its_own_is_never_replaced(tmp_path):
    """A program installed there (not a link) is left byte for byte."""
    (tmp_path / "apeinxfs").write_text("#!/bin/sh\necho packaged\n")
    done = link_script(tmp_path / "apeinxfs")
    assert done.returncode == 0 and (tmp_path / "apeinxfs").read_text() == "#!/bin/sh\necho packaged\n"
    assert "to point it here" in done.stderr


def link_state(path: str) -> tuple[bool, str | None]:
    return os.path.lexists(path), os.readlink(path) if os.path.islink(path) else None


def test_setup_leaves_the_system_path_as_it_found_it():
    """scripts/setup (run by the README's two commands and CI) neither makes nor changes /usr/local/bin/apeinxfs:
    a machine-wide link is made only when asked, by link-apeinxfs."""
    before = link_state("/usr/local/bin/apeinxfs")
    done = subprocess.run([os.path.join(ROOT, "scripts", "setup")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert link_state("/usr/local/bin/apeinxfs") == before
