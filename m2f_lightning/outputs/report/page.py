"""The report page: one self-contained HTML file (inline CSS, SVG charts, PNG data URIs; no
script, no network), readable offline and attachable as it is."""

import csv
import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from .charts import bar_chart_svg, confusion_png, png_data_uri, sorted_bars
from .collect import ReportCollector

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 10px; text-align: right; font-size: 13px; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure.worst { margin: 12px 0; } figure.worst img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 13px; margin-top: 4px; }
.chip { display: inline-block; margin: 4px 10px 0 0; }
.chip i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  border: 1px solid #888; vertical-align: -2px; } .muted { color: #777; font-size: 13px; }
"""

CHART_COLORS = {"PQ": "#3b73b9", "AP": "#c0504d", "IoU": "#4f9a56"}


def _hex(color: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in color[:3])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return escape(str(value))


def _table(
    rows: Sequence[Sequence[Any]], header: Sequence[str], table_id: str = "", named: bool = True
) -> str:
    """A table; with `named`, the first column holds names (left-aligned)."""
    ident = f' id="{table_id}"' if table_id else ""
    cells = "".join(
        f'<th class="name">{escape(h)}</th>' if i == 0 and named else f"<th>{escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="name">{_fmt(v)}</td>' if i == 0 and named else f"<td>{_fmt(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    head = f"<thead><tr>{cells}</tr></thead>" if any(header) else ""
    return f"<table{ident}>{head}<tbody>{body}</tbody></table>"


def render(
    collector: ReportCollector,
    headline: Mapping[str, float],
    per_class: Mapping[str, Sequence[float]],
    title: str = "m2f-lightning evaluation report",
    details: Mapping[str, str] | None = None,
) -> str:
    """The page's HTML. `headline`: the evaluation's metrics (percent); `per_class`: metric
    name → one value per class (percent, NaN where the class never appeared)."""
    names = collector.class_names
    records = collector.records
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    info = {"task": collector.task, "images scored": str(len(records)), **(details or {})}
    parts.append(_table(list(info.items()), ["", ""], "details"))

    parts.append("<h2>Headline</h2>")
    parts.append(
        _table([(k, float(v)) for k, v in headline.items()], ["metric", "value"], "headline")
    )

    if per_class:
        parts.append(
            "<h2>Per class</h2><p class='muted'>Sorted, highest first; classes that "
            "never appeared in the ground truth or the predictions are left out.</p>"
        )
        parts.append("<div class='charts'>")
        for metric, values in per_class.items():
            bars = sorted_bars(names, [float(v) for v in values])
            title_text = f"{metric} per class ({len(bars)} classes)"
            parts.append(
                bar_chart_svg(
                    bars,
                    title_text,
                    color=CHART_COLORS.get(metric, "#555"),
                    chart_id=f"per-class-{metric}",
                )
            )
        parts.append("</div>")

    sizes = collector.size_quality()
    if sizes:
        parts.append(
            "<h2>PQ by object size</h2><p class='muted'>COCO's area thresholds on the "
            "ground-truth segment (small &lt; 32², medium &lt; 96² pixels); a false "
            "positive counts in the size of the predicted segment.</p>"
        )
        rows = [
            (name, q["PQ"], q["SQ"], q["RQ"], q["TP"], q["FP"], q["FN"])
            for name, q in sizes.items()
        ]
        parts.append(_table(rows, ["size", "PQ", "SQ", "RQ", "TP", "FP", "FN"], "pq-by-size"))
        bars = [
            (name, q["PQ"])
            for name, q in sizes.items()
            if name != "all" and not math.isnan(q["PQ"])
        ]
        parts.append(bar_chart_svg(bars, "PQ by object size", chart_id="pq-by-size-chart"))

    if collector.confusion is not None and collector.confusion.sum() > 0:
        matrix = collector.confusion
        # only the classes that occur (in the ground truth or the predictions), and ignore
        seen = (matrix.sum(0) + matrix.sum(1)) > 0
        seen[-1] = True
        keep = np.flatnonzero(seen)
        labels = [*names, "ignore"]
        png = confusion_png(matrix[np.ix_(keep, keep)], [labels[i] for i in keep])
        left_out = len(names) + 1 - len(keep)
        note = f" {left_out} classes that never occur are left out." if left_out else ""
        parts.append(
            "<h2>Confusion matrix</h2><p class='muted'>Pixels, normalised per "
            "ground-truth row; the last row/column is the ignore label."
            f"{note}</p>"
        )
        parts.append(f"<img id='confusion' alt='confusion matrix' src='{png_data_uri(png)}'>")

    worst = collector.worst()
    if worst:
        parts.append(
            f"<h2>The {len(worst)} worst images (by {escape(collector.rank_by)})</h2>"
            "<p class='muted'>image | prediction | ground truth</p>"
        )
        for record, png, classes in worst:
            scores = {k: v for k, v in record.items() if k not in ("file_name", "image_id")}
            caption = _table([tuple(scores.values())], list(scores.keys()), named=False)
            legend = "".join(
                f"<span class='chip'><i style='background:{_hex(collector.colors[c])}'></i>"
                f"{escape(names[c])}</span>"
                for c in classes
            )
            parts.append(
                f"<figure class='worst'><img alt='{escape(record['file_name'])}' "
                f"src='{png_data_uri(png)}'><figcaption><b>{escape(record['file_name'])}</b> "
                f"(id {escape(str(record['image_id']))})<div class='legend'>{legend}</div>"
                f"{caption}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def per_image_csv(records: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for record in records:
        keys += [k for k in record if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    for record in records:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in record.items()})
    return out.getvalue()


def write_report(
    folder: Path,
    collector: ReportCollector,
    headline: Mapping[str, float],
    per_class: Mapping[str, Sequence[float] | np.ndarray],
    details: Mapping[str, str] | None = None,
) -> Path:
    """Write `report.html` and `per_image_scores.csv` (every image's scores) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "report.html"
    page.write_text(render(collector, headline, per_class, details=details), encoding="utf-8")
    (folder / "per_image_scores.csv").write_text(per_image_csv(collector.records))
    return page
