"""`apeinxfs sim --plot FILE.svg`: a run's fairness as a picture, written as plain SVG text.

Two panels over virtual time, one line per tenant in each: its share of all service in the
trailing fairness window (`--window`), and the time to first token of its requests, drawn
at the time each first token came. People compare policies by looking at them side by
side. Reads a finished run (engine.Outcome: the meter's samples and the kernel's tasks);
draws nothing else and needs no plotting library.
"""
from xml.sax.saxutils import escape

from .fairness import SAMPLES_PER_WINDOW

WIDTH, PANEL_HEIGHT, TOP = 820, 250, 70
LEFT, RIGHT, GAP = 70, 110, 60  # margins: y labels on the left, the legend on the right
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
TICKS = 5


def share_series(meter) -> dict[str, list[tuple[float, float]]]:
    """Per tenant: (time s, its part of all service served in the window up to then)."""
    series: dict = {tenant: [] for tenant in meter.tenants}
    for k in range(1, len(meter.times)):
        before, after = meter.values[max(0, k - SAMPLES_PER_WINDOW)], meter.values[k]
        total = sum(after) - sum(before)
        for i, tenant in enumerate(meter.tenants):
            series[tenant].append((meter.times[k] / 1e6, (after[i] - before[i]) / total if total else 0.0))
    return series


def ttft_series(tasks, tenants: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per tenant: (time of the first token s, time to first token s) of each task that got one."""
    series: dict = {tenant: [] for tenant in tenants}
    served = [t for t in tasks if t.first_token_us is not None and t.tenant in series]
    for task in sorted(served, key=lambda t: (t.first_token_us, t.pid)):
        series[task.tenant].append((task.first_token_us / 1e6, (task.first_token_us - task.submitted_us) / 1e6))
    return series


def render(outcome, title: str, subtitle: str) -> str:
    """The SVG document of a finished run."""
    meter, end_s = outcome.meter, outcome.end_us / 1e6
    ttfts = ttft_series(outcome.runtime.kernel.tasks.values(), meter.tenants)
    panels = [("share", f"share of service (last {outcome.options.window:g} s)", share_series(meter), 1.0),
              ("ttft", "time to first token (s), at the first token", ttfts, _nice_max(ttfts))]
    height = TOP + len(panels) * (PANEL_HEIGHT + GAP)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
             f'<text x="{WIDTH / 2}" y="38" text-anchor="middle">{escape(subtitle)}</text>']
    for n, (name, label, series, y_max) in enumerate(panels):
        top = TOP + n * (PANEL_HEIGHT + GAP)
        parts += _panel(name, label, series, top, end_s, y_max)
    parts.append(_legend(meter.tenants, outcome.workload.weights))
    return "\n".join(parts + ["</svg>"]) + "\n"


def _nice_max(series: dict) -> float:
    """A round upper bound for the y axis, a fifth of which is a round tick."""
    top = max((y for points in series.values() for _, y in points), default=0.0)
    scale = 1e-3
    while True:
        for step in (1, 1.5, 2, 3, 4, 5, 6, 8):
            if step * scale >= top:
                return step * scale
        scale *= 10


def _panel(name: str, label: str, series: dict, top: float, end_s: float, y_max: float) -> list[str]:
    """One panel: frame, ticks, axis labels and a polyline per tenant."""
    plot_w, bottom = WIDTH - LEFT - RIGHT, top + PANEL_HEIGHT

    def x(seconds: float) -> float:
        return LEFT + plot_w * seconds / end_s if end_s else LEFT

    def y(value: float) -> float:
        return bottom - PANEL_HEIGHT * min(value, y_max) / y_max

    parts = [f'<g class="panel" id="{name}">',
             f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>',
             f'<text x="{LEFT}" y="{top - 8}">{escape(label)}</text>',
             f'<text x="{LEFT + plot_w / 2}" y="{bottom + 32}" text-anchor="middle">virtual time (s)</text>']
    for i in range(TICKS + 1):
        tx, ty = x(end_s * i / TICKS), y(y_max * i / TICKS)
        parts += [f'<line x1="{tx:.1f}" y1="{bottom}" x2="{tx:.1f}" y2="{bottom + 4}" stroke="#444"/>',
                  f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{end_s * i / TICKS:g}</text>',
                  f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{LEFT + plot_w}" y2="{ty:.1f}" stroke="#ddd"/>',
                  f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{y_max * i / TICKS:.3g}</text>']
    for i, (tenant, points) in enumerate(series.items()):
        coords = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in points)
        parts.append(f'<polyline class="tenant" data-tenant="{escape(tenant)}" points="{coords}" fill="none" '
                     f'stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5"/>')
    return parts + ["</g>"]


def _legend(tenants: list[str], weights: dict) -> str:
    left = WIDTH - RIGHT + 15
    rows = [f'<g class="legend"><text x="{left}" y="{TOP + 4}">tenant (weight)</text>']
    for i, tenant in enumerate(tenants):
        row_y = TOP + 22 + 18 * i
        rows += [f'<line x1="{left}" y1="{row_y - 4}" x2="{left + 20}" y2="{row_y - 4}" '
                 f'stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="3"/>',
                 f'<text x="{left + 26}" y="{row_y}">{escape(tenant)} ({weights[tenant]})</text>']
    return "\n".join(rows + ["</g>"])
