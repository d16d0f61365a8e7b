"""Token ledgers of a tenant: fixed windows of use, with overdraw paid back in the next window.

A ledger counts tokens served in the current window (windows are aligned to the epoch,
so every node agrees where one ends). A budget may be overdrawn by a percentage; what
was used beyond the window's allowance becomes debt that shrinks the next window's
allowance, and is gone after that window (paid back). A quota is a ledger with no
overdraw. Admission adds the tokens that live tasks may still use (`reserved`), so a
burst of submits cannot all pass on the same unspent tokens. Pure arithmetic, no clock.
"""
import attrs

US = 1_000_000


@attrs.frozen
class Limit:
    """A ledger's terms: at most `tokens` per `window` seconds, `overdraw` percent more."""

    tokens: int | None
    window: int
    overdraw: int = 0
    window_us: int = attrs.field(init=False, eq=False, repr=False)

    @window_us.default
    def _window_us(self) -> int:
        return self.window * US

    def index(self, now_us: int) -> int:
        return now_us // self.window_us

    def resets_in_s(self, now_us: int) -> float:
        return ((self.index(now_us) + 1) * self.window * US - now_us) / US


@attrs.define
class TokenLedger:
    """Tokens used in the current window and the debt carried into it."""

    window_index: int = -1
    used: int = 0
    debt: int = 0
    # when the current window was entered (its first charge): what was charged before is not in `used`, even where
    # the window's length changed since and that charge's time falls in the current window's index
    window_from_us: int = 0

    def view(self, limit: Limit, now_us: int) -> tuple[int, int]:
        """(used, debt) in the window of `now_us`, without changing the ledger."""
        index = limit.index(now_us)
        if index == self.window_index:
            return self.used, self.debt
        if index == self.window_index + 1 and limit.tokens is not None:
            return 0, max(0, self.used - self.allowance(limit.tokens))
        return 0, 0

    def allowance(self, tokens: int) -> int:
        """What the current window may use before overdrawing: the limit's `tokens` less the debt."""
        return max(0, tokens - self.debt)

    def charge(self, limit: Limit, now_us: int, tokens: int, charged_us: int | None = None) -> None:
        """Count `tokens` used now. Fewer than none give back tokens charged at `charged_us` (an estimate the
        engine's count corrected), if the ledger is still in the window they were charged in: once it has moved on
        they stay used (taken back from a later window, they would cancel tokens used in it). Never below 0."""
        index = now_us // limit.window_us  # limit.index(now_us), on every token served
        if index != self.window_index:  # a new window: carry the debt over (view() says how)
            self.used, self.debt = self.view(limit, now_us)
            self.window_index, self.window_from_us = index, now_us
        if tokens >= 0:
            self.used += tokens
        elif charged_us is not None and charged_us >= self.window_from_us:  # charged in this window
            self.used = max(0, self.used + tokens)

    def refusal(self, limit: Limit, now_us: int, reserved: int, want: int) -> str | None:
        """Why `want` more tokens would pass the limit plus overdraw, or None if they fit."""
        if limit.tokens is None:
            return None
        used, debt = self.view(limit, now_us)
        ceiling = max(0, limit.tokens - debt) + limit.tokens * limit.overdraw // 100
        if used + reserved + want <= ceiling:
            return None
        paid = f", {debt} of it paying back the last window's overdraw" if debt else ""
        return (f"{used} tokens used and {reserved} reserved in this {limit.window} s window, {want} more "
                f"would pass {ceiling} ({limit.tokens} + {limit.overdraw}% overdraw{paid}); "
                f"resets in {limit.resets_in_s(now_us):.0f} s")

    def overdrawn(self, limit: Limit, now_us: int, reserved: int, want: int) -> bool:
        """Whether admitting `want` borrows beyond the window's allowance."""
        if limit.tokens is None:
            return False
        used, debt = self.view(limit, now_us)
        return used + reserved + want > max(0, limit.tokens - debt)
