"""Charts of the report, drawn without a plotting library: horizontal bar charts as inline SVG
(no script, scale with the page) and the confusion matrix as a PNG (Pillow)."""

import base64
import io
import math
from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BAR_HEIGHT = 16
LABEL_WIDTH = 190
PLOT_WIDTH = 420


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def sorted_bars(names: Sequence[str], values: Sequence[float]) -> list[tuple[str, float]]:
    """(name, value) of the classes with a value (NaN: the class never appeared), highest
    first; ties by name."""
    pairs = [(str(n), float(v)) for n, v in zip(names, values, strict=True) if not math.isnan(v)]
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def bar_chart_svg(
    bars: Sequence[tuple[str, float]],
    title: str,
    max_value: float = 100.0,
    color: str = "#3b73b9",
    chart_id: str | None = None,
) -> str:
    """A horizontal bar chart, one bar per (label, value), values on 0..max_value."""
    top, gap = 24, 4
    height = top + len(bars) * (BAR_HEIGHT + gap) + 8
    width = LABEL_WIDTH + PLOT_WIDTH + 60
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg"{ident} class="chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="15" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = LABEL_WIDTH + tick * PLOT_WIDTH
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 6}" stroke="#ddd"/>'
        )
    for i, (label, value) in enumerate(bars):
        y = top + i * (BAR_HEIGHT + gap)
        w = max(0.0, min(1.0, value / max_value)) * PLOT_WIDTH if max_value > 0 else 0.0
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f"<g><title>{escape(label)}: {value:.2f}</title>"
            f'<text x="{LABEL_WIDTH - 6}" y="{y + BAR_HEIGHT - 4}" font-size="11" '
            f'text-anchor="end">{escape(short)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT}" '
            f'fill="{color}"/>'
            f'<text x="{LABEL_WIDTH + w + 4:.1f}" y="{y + BAR_HEIGHT - 4}" '
            f'font-size="11">{value:.1f}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def confusion_png(
    matrix: np.ndarray, names: Sequence[str], max_named: int = 40, cell: int | None = None
) -> bytes:
    """The confusion matrix (rows ground truth, columns prediction) normalised per row, white
    (0) to dark blue (1), as PNG. Class names label the rows and columns when there are at most
    `max_named` classes; rows with no pixel stay light grey."""
    n = len(matrix)
    cell = cell or max(2, min(28, 720 // max(n, 1)))
    rows = matrix.sum(1, keepdims=True).astype(np.float64)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    # white → #08306b
    low, high = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    rgb = (low + norm[..., None] * (high - low)).round().astype(np.uint8)
    rgb[(rows[:, 0] == 0)] = 235
    grid = np.kron(rgb, np.ones((cell, cell, 1), dtype=np.uint8))
    named = n <= max_named
    font = _font(11)
    margin = 0
    if named:
        margin = 8 + max(
            int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(s), font=font))
            for s in names
        )
    header = 18
    caption = "rows: ground truth, columns: prediction"
    text_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font))
    size = (max(margin + grid.shape[1] + 2, text_width + 4), header + margin + grid.shape[0] + 2)
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (margin, header + margin))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), caption, font=font, fill=(0, 0, 0))
    if named:
        for i, name in enumerate(names):
            y = header + margin + i * cell + cell // 2
            draw.text((margin - 4, y), str(name), font=font, fill=(0, 0, 0), anchor="rm")
        # column names, written vertically
        column = Image.new("RGB", (margin, grid.shape[1]), (255, 255, 255))
        cdraw = ImageDraw.Draw(column)
        for i, name in enumerate(names):
            cdraw.text((4, i * cell + cell // 2), str(name), font=font, fill=(0, 0, 0), anchor="lm")
        canvas.paste(column.rotate(90, expand=True), (margin, header))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
