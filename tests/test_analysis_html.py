"""report.html renders in headless Chromium (Debian's `chromium`; see NO_CHROMIUM in conftest.py) with
every embedded figure decoded, offline: the page references nothing outside itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from analysis.report import write_report
from bench.synthetic_runs import write_sample
from conftest import CHROMIUM, NO_CHROMIUM

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

# Everything that could reach a network or a desktop session off; --no-sandbox because CI runs as root.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)

# Run after the page's load event, when every <img> has decoded or failed: naturalWidth is 0 for
# an image the browser could not decode.
_PROBE = """<script>
window.addEventListener("load", () => {
  document.title = "widths:" + Array.from(document.images, image => image.naturalWidth).join(",");
});
</script></body>"""


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *arguments], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("runs")
    write_sample(storage)
    out = tmp_path_factory.mktemp("report")
    write_report(str(storage), out, ["exact_match", "f1", "unifiedqa"], jobs=1, show_progress=False)
    return out / "report.html"


def test_html_report_screenshot_in_headless_chromium_is_not_blank(html_report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", html_report.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    dark = np.mean(pixels.min(axis=2) < 0.5)
    # Text, table rules and figures cover a few percent of a white page; blank would be 0.
    assert dark > 0.01 and pixels.std() > 0.05, f"screenshot looks blank: {dark:.4f} dark pixels"


def test_every_figure_in_the_html_report_decodes_in_chromium(html_report, tmp_path):
    page = html_report.read_text()
    figures = len(list((html_report.parent / "figures").glob("*.png")))
    assert figures >= 6 and page.count("<img ") == figures
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE, 1))
    result = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    match = re.search(r"<title>widths:([\d,]*)</title>", result.stdout)
    assert match, f"the probe did not run: {result.stdout[:500]} {result.stderr[-2000:]}"
    widths = [int(w) for w in match.group(1).split(",") if w]
    assert len(widths) == figures and all(w > 100 for w in widths), widths
