"""The report's plots as PNG files, rendered offline: Vega-Lite specs with the data inline,
drawn by vl-convert (Vega's own renderer compiled in; no browser, no network)."""

from __future__ import annotations

from smolforge.report.gather import Model


def line_chart(title: str, rows: list[dict], x: str, width: int) -> dict:
    """A Vega-Lite spec: one line per `series` value of `rows` ({x, "value", "series"})."""
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": width,
        "height": int(width * 0.55),
        "data": {"values": rows},
        "mark": {"type": "line", "point": len(rows) <= 60},
        "encoding": {
            "x": {"field": x, "type": "quantitative"},
            "y": {"field": "value", "type": "quantitative", "scale": {"zero": False}},
            "color": {"field": "series", "type": "nominal"},
        },
    }


def specs(model: Model, width: int) -> dict[str, dict]:
    """file name -> spec, for each plot the model's files allow."""
    out = {}
    losses = {k: v for k, v in model.series.items() if k.endswith("loss")}
    if losses:
        rows = [{"step": s, "value": v, "series": name} for name, series in losses.items() for s, v in series]
        out[f"{model.name}_loss.png"] = line_chart(f"{model.name}: loss by step", rows, "step", width)
    for name, table in model.tables.items():
        if not table:
            continue
        x = next(k for k in table[0] if k != "set")  # the x axis: the first column but a set name
        ys = sorted({k for r in table for k, v in r.items() if k != x and isinstance(v, float)})
        rows = [
            {x: r[x], "value": r[y], "series": f"{r['set']} {y}" if "set" in r else y}
            for r in table
            for y in ys
            if r.get(y) is not None
        ]
        out[f"{model.name}_{name}.png"] = line_chart(
            f"{model.name}: {name.replace('_', ' ')}", rows, x, width
        )
    return out


def render(spec: dict) -> bytes:
    import vl_convert

    return vl_convert.vegalite_to_png(spec, scale=1)
