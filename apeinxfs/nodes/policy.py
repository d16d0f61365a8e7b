"""/ctl/policy: the ordered DENY / ALLOW / LIMIT rules of kernel/policy.py, read and written.

Reading prints each rule's canonical text, one per line, in order; writing that text
back restores them (writes mirror reads). Opening with O_TRUNC (`>` in a shell) replaces
the list: the first write on that descriptor that is taken replaces, later ones append, and
one that writes nothing before its last close empties it (a refused write changes nothing). `>>` appends. Blank lines and `#` comments are
skipped. Admins only; every change is journaled and audited.
"""
import stat

import attrs

from ..kernel.events import SetRules
from ..kernel.policy import parse_rule
from .base import CommandHandle, Setting, SnapshotHandle
from .ctl import by, run_lines

MODE = stat.S_IFREG | 0o644


def show(kernel) -> str:
    return "".join(f"{rule.text}\n" for rule in kernel.tenancy.rules)


def rules_command(rt, raw_lines: list[bytes], caller, replace: bool) -> list[str]:
    """Append the lines' rules (all or none), or replace the list with them."""
    lines = [raw for raw in raw_lines if not raw.lstrip().startswith(b"#")]
    replacing = [replace]

    def to_event(line, c):
        c.identity.require("admin", "changing the policy")
        event = SetRules(rules=(parse_rule(line).text,), replace=replacing[0], **by(c))
        replacing[0] = False
        return event
    if replace and not any(raw.strip() for raw in lines):
        caller.identity.require("admin", "changing the policy")
        rt.commit([SetRules(rules=(), replace=True, **by(caller))])
        return []
    return run_lines(rt, lines, caller, to_event)


@attrs.define(eq=False)
class RulesFile(Setting):
    """The policy file: a Setting whose handle knows whether it replaces or appends."""

    mode: int = MODE
    rt: object = None

    def open(self, caller, writing, reading, truncating=False):
        return RulesHandle(self, caller, self.writes.limits, replacing=truncating) if writing else SnapshotHandle(self)


@attrs.define(eq=False)
class RulesHandle(CommandHandle):
    """Runs the rules written; the first write after an O_TRUNC open replaces the list."""

    replacing: bool = False

    def _command(self, raw_lines: list[bytes]) -> list[str]:
        replies = rules_command(self.node.rt, raw_lines, self.caller, self.replacing)
        self.replacing = False
        return replies

    def _last_close(self) -> None:
        """Run an unterminated last line; then, if opened with O_TRUNC and nothing was written
        (`: > ctl/policy`), empty the list. A refused write leaves it as it was: all or nothing."""
        try:
            super()._last_close()
        finally:
            if self.replacing and not self.written:
                self._run([])
