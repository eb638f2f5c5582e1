"""The offline `dvc plots` template: what DVC fills is there once, nothing loads from a network."""

from __future__ import annotations

import os

import pytest

from smolforge.dev import plots_page


@pytest.fixture(scope="module")
def page() -> str:
    return plots_page.page()  # bundles vega, vega-lite and vega-embed: a few seconds


def test_the_template_has_what_dvc_fills_and_the_scripts_inline(page):
    assert page.count("{plot_divs}") == 1 and page.count("{refresh_tag}") == 1
    assert "{scripts}" not in page  # DVC would put its CDN <script src=...> tags there
    assert "<script src" not in page
    assert page.count("</script>") == 1  # the bundle cannot close its own tag early
    assert "window.vegaEmbed=" in page and f"<!-- {plots_page.stamp()} -->" in page
    assert "vega-lite 5." in plots_page.stamp()  # DVC's plot templates use the v5 schema


def test_write_is_atomic_and_skips_a_current_template(tmp_path, page):
    out = tmp_path / ".dvc/plots.html"
    plots_page.main([str(out)])
    assert out.read_text(encoding="utf-8") == page
    assert [p.name for p in out.parent.iterdir()] == ["plots.html"]  # no temp file left
    os.utime(out, (1, 1))
    plots_page.main([str(out)])
    assert out.stat().st_mtime == 1  # current: not rewritten (install.sh runs it every time)
    out.write_text("<!-- vega 0 -->{plot_divs}")
    plots_page.main([str(out)])
    assert out.read_text(encoding="utf-8") == page  # stale: rewritten
