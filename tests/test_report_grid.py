"""The report at grid scale: 101 synthetic runs (81 configurations) shaped like manifests/grid.yaml,
opened in headless Chromium. Every figure fits the page at its natural size, and the results
table sorts when a header is clicked and filters as words are typed.

Chromium is driven with `--dump-dom`: a probe script appended to the page runs after the load
event, clicks headers and types into the filter box as a user would (DOM events), and writes
what it measured as JSON into a <pre> that the dumped DOM carries back to the test.
"""

from __future__ import annotations

import html
import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

from analysis.plot_style import DPI, MAX_WIDTH_IN
from analysis.report import write_report
from bench.synthetic_runs import grid_runs, write_grid
from conftest import CHROMIUM, NO_CHROMIUM

# Everything that could reach a network or a desktop session off; --no-sandbox because CI runs as root.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--force-device-scale-factor=1", "--window-size=1280,2000",
)

FILTER = "mistral adalora"
"""Typed into the filter box: rows must contain both words."""

_PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  const style = getComputedStyle(document.body);
  out.page = document.body.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  out.viewport = document.documentElement.clientWidth;
  out.scroll = document.documentElement.scrollWidth;
  out.figures = Array.from(document.images, image => ({
    name: image.closest("figure").id, natural: image.naturalWidth, content: image.width, box: image.getBoundingClientRect().width,
  }));
  const table = document.querySelector("table.interactive");
  const header = Array.from(table.tHead.rows[0].cells);
  const column = index => Array.from(table.tBodies[0].rows, row => row.cells[index].textContent.trim());
  out.headers = header.map(cell => cell.textContent.trim());
  out.before = column(0);
  const cost = out.headers.indexOf("cost GPU-h"), model = out.headers.indexOf("model");
  header[cost].click();
  out.ascending = {order: column(0), values: column(cost), aria: header[cost].getAttribute("aria-sort")};
  header[cost].click();
  out.descending = {order: column(0), values: column(cost), aria: header[cost].getAttribute("aria-sort")};
  header[model].click();
  out.byModel = column(model);
  const box = document.getElementById(table.dataset.filter);
  box.value = "FILTER";
  box.dispatchEvent(new Event("input"));
  out.filtered = Array.from(table.tBodies[0].rows, row => ({text: row.textContent, shown: row.getClientRects().length > 0}));
  out.count = document.getElementById(table.dataset.filter + "-count").textContent;
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
});
</script></body>""".replace("FILTER", FILTER)

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("grid")
    write_grid(storage)
    out = tmp_path_factory.mktemp("grid-report")
    # One metric keeps the figures to one bar chart; the other figures do not depend on it.
    write_report(str(storage), out, ["unifiedqa"], jobs=1, show_progress=False, price_per_gpu_hour=2.5)
    return out


@pytest.fixture(scope="module")
def probe(grid_report, tmp_path_factory) -> dict:
    page = grid_report / "report.html"
    probed = tmp_path_factory.mktemp("probe") / "probe.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE, 1))
    profile = probed.parent / "profile"
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe did not run: {result.stdout[:500]} {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _png_width(path: Path) -> int:
    # A PNG's width is the first field of its IHDR chunk, bytes 16-20.
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_the_grid_has_over_a_hundred_runs_in_81_configurations(grid_report):
    rows = (grid_report / "results.csv").read_text().splitlines()
    configs = (grid_report / "results_by_config.csv").read_text().splitlines()
    assert len(grid_runs()) == len(rows) - 1 == 101
    assert len(configs) - 1 == 81


def test_every_figure_file_is_at_most_the_page_width(grid_report):
    widths = {p.stem: _png_width(p) for p in (grid_report / "figures").glob("*.png")}
    expected = {"bars_unifiedqa", "pareto_cost", "pareto_speed", "memory", "heatmap_format", "shots_curve", "speed_up", "breakeven", "loss_curves"}
    assert expected <= set(widths)
    assert max(widths.values()) <= MAX_WIDTH_IN * DPI, widths


@needs_chromium
def test_every_figure_renders_at_its_natural_width_within_the_page_in_chromium(probe):
    assert len(probe["figures"]) >= 9
    for figure in probe["figures"]:
        # Shown at its own pixel size (never scaled down, so 7-point text stays 7-point), border included inside the column.
        assert figure["natural"] > 100 and figure["content"] == figure["natural"] and figure["box"] <= probe["page"], figure
    assert probe["scroll"] <= probe["viewport"], "nothing makes the page scroll sideways"


def _cost(cell: str) -> float:
    return float(cell.replace(",", ""))


@needs_chromium
def test_clicking_a_header_sorts_the_results_table_and_clicking_again_reverses_it(probe):
    assert probe["before"] == [str(i) for i in range(1, 82)], "rows start in configuration order"
    ascending, descending = probe["ascending"], probe["descending"]
    values = [_cost(v) for v in ascending["values"]]
    assert ascending["aria"] == "ascending" and values == sorted(values)
    assert ascending["order"] != probe["before"], "the rows moved"
    values = [_cost(v) for v in descending["values"]]
    assert descending["aria"] == "descending" and values == sorted(values, reverse=True)
    assert sorted(ascending["order"], key=int) == probe["before"], "sorting keeps every row"
    assert probe["byModel"] == sorted(probe["byModel"])


@needs_chromium
def test_typing_in_the_filter_box_hides_the_rows_without_every_word(probe):
    shown = [row for row in probe["filtered"] if row["shown"]]
    for row in probe["filtered"]:
        assert row["shown"] == all(word in row["text"].lower() for word in FILTER.split())
    # mistral-7b adalora: greedy (2 seeds pooled) and prompt lookup.
    assert len(shown) == 2 and probe["count"] == "2 of 81 rows"


def test_run_labels_carry_the_prompt_format_the_shards_record(grid_report):
    markdown = (grid_report / "report.md").read_text()
    assert "| decoding | prompt | seeds |" in markdown and "| 1 | gemma-2b | adalora | 0 | greedy | chat | 2 |" in markdown
    # The fronts table names configurations by their labels: method · k-shot · decoding · prompt format.
    assert re.search(r"\| [a-z_]+ · \d+-shot · [a-z_]+ · (chat|plain)( \(2 seeds\))? \|", markdown)
