"""`dvc plots show` / `dvc plots diff` pages draw every declared plot with no network, in a
real headless Chromium (Debian's `chromium`, which .ci/run installs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from dvc_render.base import Renderer

from smolforge.dev.sandbox import sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# a fresh profile per run; every host name fails to resolve, so the page gets nothing from
# the network even on a machine that has one (DVC's own CDN page is the control)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=30000",  # ms of page time for vega-embed's promises to settle
)


def chromium() -> str:
    """Chromium's path; under CI a missing browser fails the test instead of skipping it."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    msg = "Chromium not found: install Debian's package (apt-get install -y chromium; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def dom(page: Path, profile: Path) -> BeautifulSoup:
    """The page's DOM after its scripts ran, from headless Chromium's --dump-dom."""
    res = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0 and "<body" in res.stdout, f"chromium failed ({res.returncode}):\n{res.stderr}"
    return BeautifulSoup(res.stdout, "html.parser")


def drawn(soup: BeautifulSoup, plot_id: str) -> bool:
    """Whether the plot's vega-embed container holds an SVG whose data marks (lines, points,
    bars: vega's `role-mark` groups, not the axes or background) have geometry."""
    div = soup.find("div", id=Renderer.remove_special_chars(plot_id))
    svg = div.find("svg", class_="marks") if div else None
    paths = svg.select("g.role-mark path[d]") if svg else []
    return any(any(c.isdigit() for c in p["d"]) for p in paths)


def declared_plots(repo: Path, *diff: str) -> list[str]:
    """The plot ids DVC renders, from `dvc plots show|diff --json` (every declared plot)."""
    out = sh(repo, "dvc", "plots", *(("diff", *diff) if diff else ("show",)), "--json")
    data, _ = json.JSONDecoder().raw_decode(out, out.index("{"))  # stderr's notes may follow
    assert not data.get("errors"), f"dvc plots reported errors: {data['errors']}"
    return sorted(data["data"])


@pytest.fixture(scope="module")
def repo(finished: Path) -> Path:
    """The finished pipeline with the offline template written as tools/install.sh writes it."""
    sh(finished, sys.executable, "-m", "smolforge.dev.plots_page", ".dvc/plots.html")
    return finished


@pytest.mark.parametrize("command", [("show",), ("diff", "HEAD")], ids=["show", "diff"])
def test_plots_page_draws_every_declared_plot_offline(repo, tmp_path, command):
    plots = declared_plots(repo, *command[1:])
    assert len(plots) >= 3, f"expected the pipeline's declared plots, got {plots}"
    sh(repo, "dvc", "plots", *command, "-o", str(tmp_path / "offline"))
    page = tmp_path / "offline/index.html"
    assert "<script src=" not in page.read_text()  # nothing to fetch: the scripts are inline
    soup = dom(page, tmp_path / "profile")
    missing = [p for p in plots if not drawn(soup, p)]
    assert not missing, f"these plots did not draw offline: {missing}"

    # the control: DVC's own page (scripts from a CDN) draws nothing without a network,
    # so the check above can tell a drawn chart from a blank page
    cdn = tmp_path / "cdn.html"
    cdn.write_text("<html><head>{scripts}</head><body>{plot_divs}</body></html>")
    sh(repo, "dvc", "plots", *command, "-o", str(tmp_path / "cdn"), "--html-template", str(cdn))
    blank = dom(tmp_path / "cdn/index.html", tmp_path / "profile-cdn")
    assert not any(drawn(blank, p) for p in plots), "DVC's CDN page drew: the browser was not offline"
