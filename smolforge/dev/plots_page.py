"""The HTML template that `dvc plots show` / `dvc plots diff` fill, with vega, vega-lite and
vega-embed inlined, so the page draws with no network.

DVC's own page loads the three scripts from a CDN and stays blank offline. `.dvc/config`
names this file (`plots.html_template = plots.html`, relative to `.dvc/`); tools/install.sh
writes it with

    python -m smolforge.dev.plots_page .dvc/plots.html

The scripts come from the pinned PyPI wheel `vl-convert-python`, which bundles them (about
0.9 MB of JavaScript), so nothing is committed and nothing is fetched but the wheel.
Vega-Lite 5 is chosen because DVC's plot templates are written for its v5 schema.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

VEGALITE = "5.21"  # the newest 5.x that vl-convert bundles; DVC's templates use the v5 schema

# DVC replaces {scripts} with its CDN <script> tags, so the template leaves it out, and
# {plot_divs} with one <div> per plot whose inline script calls vegaEmbed(...) at once: the
# bundle must be a classic script in <head> that has run before the body is parsed.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {stamp} -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def stamp() -> str:
    """What the template holds, written into it: a template with the same stamp is current."""
    from importlib.metadata import version

    import vl_convert

    return (
        f"vega {vl_convert.get_vega_version()}, vega-lite {VEGALITE}, vega-embed "
        f"{vl_convert.get_vega_embed_version()}: inlined from vl-convert-python {version('vl-convert-python')}"
    )


def page() -> str:
    """The template's text."""
    import vl_convert

    # an IIFE keeps the bundle's one-letter top-level names out of the page's global scope
    # (DVC's divs declare `var spec`); the bundle sets window.vega, vegaLite and vegaEmbed
    bundle = "(function () {\n" + vl_convert.javascript_bundle(vl_version=VEGALITE) + "\n})();"
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        if placeholder in bundle:  # DVC would replace it inside the script
            raise RuntimeError(f"the vega bundle contains DVC's placeholder {placeholder}")
    bundle = bundle.replace("</script", "<\\/script")  # would end the inline <script> early
    return PAGE.replace("{{", "{").replace("}}", "}").replace("{stamp}", stamp()).replace("{bundle}", bundle)


def write(path: Path) -> Path:
    """Write the template to `path` atomically, unless the one there is current."""
    if path.is_file() and f"<!-- {stamp()} -->" in path.read_text(encoding="utf-8")[:2000]:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="where to write the template, e.g. .dvc/plots.html")
    args = ap.parse_args(argv)
    write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
