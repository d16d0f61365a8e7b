"""The grammar /ctl/models and /ctl/tenants share: `add NAME ...` and `remove NAME` lines, admins only.

An `AddRemove` splits the verb off a line and routes it: `add REST` to the file's own parser and
event, `remove NAME` to its removal event, anything else to its usage line, an Invalid. Each file
keeps its own words (what the admin role is required for, its usage line) and what an `add`
line describes; this module does not parse the `key=value` pairs after the name (the files do,
with kernel/grammar.py split_pairs).
"""
from collections.abc import Callable

import attrs

from ..kernel.endpoints import redacted
from ..kernel.errors import Invalid
from .ctl import by, run_lines


@attrs.frozen
class AddRemove:
    """A ctl file of `add NAME ...` and `remove NAME` lines, written by admins only."""

    doing: str  # what the admin role is required for, as the refusal says it
    usage: str  # the reply to a line that is neither
    add: Callable  # add(rest, what=, uid=, caller_pid=, caller_tenant=) -> the event of `add REST`
    remove: Callable  # remove(name, uid=, caller_pid=, caller_tenant=) -> the event of `remove NAME`
    bare_add: bool = False  # a bare `add` goes to `add` (refused there, in its words), not to the usage line

    def to_event(self, line: str, caller):
        """The event of one line written by `caller`; Denied unless an admin, Invalid unless add or remove."""
        caller.identity.require("admin", self.doing)
        verb, _, rest = line.strip().partition(" ")
        if verb == "add" and (rest.strip() or self.bare_add):
            return self.add(rest, what=redacted(f"add {rest.strip()}"), **by(caller))  # journaled as shown: no credentials
        if verb == "remove" and rest.strip():
            return self.remove(rest.strip(), **by(caller))
        raise Invalid(self.usage)

    def command(self, rt):
        """The file's write function: its lines, all or nothing (ctl.py run_lines)."""
        return lambda lines, caller: run_lines(rt, lines, caller, self.to_event)
