"""/billing and /tenants/NAME/bill: usage and cost per period, tenant and model (CSV).

Quantities come from kernel/billing.py's book; the cost of a row is its quantities at
the model's prices (exact decimals), rounded half up to the cent. GPU- and page-seconds
print with six decimals, exactly the microseconds booked.
"""
import time

HEADER = "period_start,tenant,model,tokens_in,tokens_out,gpu_seconds,kv_page_seconds,cost\n"


def seconds(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def show(kernel, tenant: str | None = None) -> str:
    """Every row of the book, or only `tenant`'s."""
    rows = []
    for (start, name, model), usage in kernel.bills.of(tenant):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        cost = usage.cost(kernel.models[model].price) if model in kernel.models else "?"
        rows.append(f"{when},{name},{model},{usage.tokens_in},{usage.tokens_out},{seconds(usage.gpu_us)},"
                    f"{seconds(usage.page_us)},{cost}\n")
    return HEADER + "".join(rows)
