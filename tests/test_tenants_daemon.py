"""Tier 3: tenants through a live daemon, as root: weighted shares and the bill against the trace.

Weighted tenants (100 and 300, both backlogged) must be served 1:3 within 5%, measured on
the daemon's own usage files; the bill in /billing must equal what the trace's `bill`
lines add up to at the configured prices, to the cent, before and after kill -9.
The same rules as other Unix users are in test_tenants_mount.py.
"""
import csv
import decimal
import io
import time

import pytest

from daemon import Daemon, poll_until, sim_config

pytestmark = pytest.mark.mount

US = 1_000_000
PRICES = {"input_per_1k": "0.37", "output_per_1k": "1.13", "gpu_second": "0.071", "kv_page_second": "0.0029"}
TENANTS = """
[billing]
period = "1h"
[[tenants]]
name = "default"
[[tenants]]
name = "light"
weight = 100
[[tenants]]
name = "heavy"
weight = 300
"""
PRICE_TOML = "[models.price]\n" + "".join(f'{k} = "{v}"\n' for k, v in PRICES.items())


def tenant_config(step_ms: float) -> str:
    return sim_config(step_ms) + PRICE_TOML + TENANTS


def usage(daemon, tenant: str) -> dict:
    with open(daemon.path("tenants", tenant, "usage")) as file:
        return {key: value for key, value in (line.split() for line in file)}


def submit_many(daemon, tenant: str, count: int, tokens: int) -> None:
    lines = "".join(f"name={tenant}{i} max_tokens={tokens} tenant={tenant} prompt=\"a shared question\"\n"
                    for i in range(count))
    with open(daemon.path("ctl", "submit"), "wb", buffering=0) as ctl:
        ctl.write(lines.encode())


def test_weighted_tenants_are_served_one_to_three(tmp_path):
    """Tenants of weight 100 and 300, both backlogged, get output tokens 1:3 within 5%."""
    with Daemon(tmp_path / "ai", tmp_path / "state", tenant_config(2)) as daemon:
        submit_many(daemon, "light", 40, 3000)
        submit_many(daemon, "heavy", 40, 3000)
        poll_until(lambda: int(usage(daemon, "light")["tokens_out"]) > 500, 20, "light is served")
        before = {t: int(usage(daemon, t)["tokens_out"]) for t in ("light", "heavy")}
        poll_until(lambda: int(usage(daemon, "light")["tokens_out"]) > before["light"] + 6000, 60, "6000 more tokens")
        after = {t: usage(daemon, t) for t in ("light", "heavy")}
    served = {t: int(after[t]["tokens_out"]) - before[t] for t in before}
    assert all(int(after[t]["held"]) + int(after[t]["tasks"]) > 16 for t in after), "both must stay backlogged"
    assert served["heavy"] / served["light"] == pytest.approx(3.0, rel=0.05)


def bill_rows(daemon) -> dict:
    """(period_start, tenant, model) -> cost, as /billing says."""
    with open(daemon.path("billing")) as file:
        return {(r["period_start"], r["tenant"], r["model"]): decimal.Decimal(r["cost"]) for r in csv.DictReader(file)}


def bill_from_trace(daemon, period_s: int = 3600) -> dict:
    """The same rows, computed from the trace's `bill` lines and PRICES alone."""
    price = {k: decimal.Decimal(v) for k, v in PRICES.items()}
    with open(daemon.path("trace", "events")) as file:
        rows = [r for r in csv.DictReader(file) if r["type"] == "bill"]
    totals = {}
    for row in rows:
        q = {k: int(v) for k, v in (part.split("=") for part in row["detail"].split())}
        start = int(row["time_us"]) // (period_s * US) * period_s
        key = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), row["tenant"], row["model"])
        totals[key] = totals.get(key, 0) + (q["in"] * price["input_per_1k"] / 1000 + q["out"] * price["output_per_1k"] / 1000
                                            + q["gpu_us"] * price["gpu_second"] / US
                                            + q["kv_page_us"] * price["kv_page_second"] / US)
    return {k: v.quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP) for k, v in totals.items()}


def all_exited(daemon, count: int) -> bool:
    return all(daemon.status(pid)["State"].startswith("Z") for pid in range(1, count + 1))


def test_bill_equals_the_trace_to_the_cent_before_and_after_kill9(tmp_path):
    """/billing equals the sum of the trace's bill lines at the prices, before and after a crash."""
    daemon = Daemon(tmp_path / "ai", tmp_path / "state", tenant_config(5))
    with daemon:
        submit_many(daemon, "light", 6, 400)
        submit_many(daemon, "heavy", 6, 400)
        poll_until(lambda: all_exited(daemon, 12), 60, "the first 12 tasks exit")
        first = bill_rows(daemon)
        assert first == bill_from_trace(daemon) and sum(first.values()) > 0
        submit_many(daemon, "light", 4, 3000)
        poll_until(lambda: int(usage(daemon, "light")["running"]) > 0 and
                   int(usage(daemon, "light")["tokens_out"]) > 2400, 30, "the long tasks run")
        daemon.kill9()
        daemon.start()
        after_restart = bill_rows(daemon)
        assert after_restart == bill_from_trace(daemon)
        assert all(after_restart[key] >= cost for key, cost in first.items())
        poll_until(lambda: all_exited(daemon, 16), 90, "all 16 tasks exit")
        assert bill_rows(daemon) == bill_from_trace(daemon)
