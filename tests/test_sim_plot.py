"""Tier 1: `apeinxfs sim --plot FILE.svg` (sim/plot.py): a valid SVG with a line per tenant per panel."""
import contextlib
import io
import xml.etree.ElementTree as ET

from apeinxfs import simulate
from test_simulate import WORKLOADS, simulate_report

SVG = "{http://www.w3.org/2000/svg}"


def test_plot_draws_share_and_ttft_of_every_tenant(tmp_path):
    """The SVG parses, and each of its two panels has one polyline per tenant, inside the picture."""
    path = tmp_path / "run.svg"
    simulate_report(WORKLOADS / "weighted.csv", "--gpus", 1, "--until", 20, "--plot", path)
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    width, height = (float(v) for v in root.get("viewBox").split()[2:])
    panels = {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"}
    assert set(panels) == {"share", "ttft"}
    for panel in panels.values():
        lines = panel.findall(f"{SVG}polyline")
        assert sorted(line.get("data-tenant") for line in lines) == ["w1", "w2", "w3", "w4"]
        for line in lines:
            points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
            assert len(points) > 5 and all(0 <= x <= width and 0 <= y <= height for x, y in points)
    legend = "".join(root.find(f"{SVG}g[@class='legend']").itertext())
    assert "w4 (400)" in legend


def test_plot_to_an_unwritable_path_fails_with_a_reason(tmp_path):
    """A --plot file in a missing directory: exit 1 and `apeinxfs sim: ...` on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = simulate.main([str(WORKLOADS / "agents.csv"), "--plot", str(tmp_path / "no" / "x.svg")])
    assert status == 1 and err.getvalue().startswith("apeinxfs sim: ") and "No such file" in err.getvalue()
