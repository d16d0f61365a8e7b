"""Billing: what each tenant used of each model, per billing period, and what it costs.

A task is metered while it holds a batch slot (a segment: dispatch to preemption or
exit): the input tokens of its first segment, the tokens it generated, the slot time
(GPU-seconds) and the integral of its KV pages over time (page-seconds). A segment is
booked when it ends, into the period of that moment, and the trace gets a `bill` line
with the same quantities, so a bill can be recomputed from the trace alone. Costs use
exact decimals from the model's price table and are rounded to the cent per row.
"""
import decimal
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .config import Price

US = 1_000_000
CENT = decimal.Decimal("0.01")


@attrs.define
class Meter:
    """A running segment: since when, what it served so far, its page-time until `mark_us`."""

    start_us: int
    mark_us: int
    last_us: int
    tokens_in: int = 0
    tokens_out: int = 0
    page_us: int = 0

    def advance(self, now_us: int, pages: int) -> None:
        """Add the page-time up to `now_us` at `pages` pages."""
        self.page_us += pages * (now_us - self.mark_us)
        self.mark_us = now_us


@attrs.define
class Usage:
    """Quantities billed: tokens in and out, slot microseconds, page microseconds."""

    tokens_in: int = 0
    tokens_out: int = 0
    gpu_us: int = 0
    page_us: int = 0

    def add(self, other: "Usage") -> None:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.gpu_us += other.gpu_us
        self.page_us += other.page_us

    def cost(self, price: "Price") -> decimal.Decimal:
        """Exact cost under `price`, rounded half up to the cent."""
        exact = (self.tokens_in * price.input_per_1k / 1000 + self.tokens_out * price.output_per_1k / 1000
                 + self.gpu_us * price.gpu_second / US + self.page_us * price.kv_page_second / US)
        return exact.quantize(CENT, rounding=decimal.ROUND_HALF_UP)

    def detail(self) -> str:
        return f"in={self.tokens_in} out={self.tokens_out} gpu_us={self.gpu_us} kv_page_us={self.page_us}"


def segment_usage(meter: Meter, end_us: int) -> Usage:
    return Usage(meter.tokens_in, meter.tokens_out, end_us - meter.start_us, meter.page_us)


class BillBook:
    """Usage per (period start in seconds, tenant, model), in the order first booked."""

    def __init__(self, period_s: int) -> None:
        self.period_s = period_s
        self.rows: dict[tuple[int, str, str], Usage] = {}

    def book(self, now_us: int, tenant: str, model: str, usage: Usage) -> None:
        start = now_us // (self.period_s * US) * self.period_s
        self.rows.setdefault((start, tenant, model), Usage()).add(usage)

    def of(self, tenant: str | None = None) -> list[tuple[tuple[int, str, str], Usage]]:
        """Rows sorted by period, tenant and model; only `tenant`'s if given."""
        return sorted((key, usage) for key, usage in self.rows.items() if tenant in (None, key[1]))
