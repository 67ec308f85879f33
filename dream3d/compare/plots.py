"""Loss curves drawn with PIL only (no plotting library): :func:`loss_plot` puts one metrics.csv column of several
runs on one chart (axes with round ticks, grid lines, a legend), each run the raw curve faint and a moving
average on top, and writes it atomically as a PNG. :func:`read_metric` reads the column; :func:`nice_ticks` and
:func:`moving_average` are the small numerics behind the chart.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from dream3d.compare.errors import ReportError
from dream3d.io import save_png

_PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))


def read_metric(csv_path: str | Path, key: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(steps [N], values [N]) of column ``key`` of a metrics.csv (empty and non-finite cells left out), or None
    when the file has no such column."""
    path = Path(csv_path)
    if not path.is_file():
        raise ReportError(f"{path}: not found (expected a stages/<stage>/metrics.csv)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            return None
        pairs = [(_float(row.get("step")), _float(row.get(key))) for row in reader]
    pairs = [(s, v) for s, v in pairs if math.isfinite(s) and math.isfinite(v)]
    return np.array([s for s, _ in pairs], np.float64), np.array([v for _, v in pairs], np.float64)


def _float(text: Optional[str]) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average [N] -> [N]; the window shrinks at the ends (no padding bias)."""
    if window <= 1 or len(values) < 2:
        return values.copy()
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) within [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / max(count, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _value_range(series: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """y range: the smoothed curves and the 2nd..98th percentile of the raw values (spikes go off the chart)."""
    lows = [min(float(s.min()), float(np.percentile(v, 2))) for _, v, s in series]
    highs = [max(float(s.max()), float(np.percentile(v, 98))) for _, v, s in series]
    lo, hi = min(lows), max(highs)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1.0)
    return lo - pad, hi + pad


def loss_plot(
    csv_paths: dict[str, Path], key: str, out_png: str | Path, title: Optional[str] = None,
    size: tuple[int, int] = (720, 360),
) -> list[str]:
    """Plot column ``key`` of each run's metrics.csv against step on one chart -> the labels plotted.

    Each run is one colour: the raw curve faint, a moving average (window ~1/25 of the steps) on top. Axes with
    round tick values, a legend with the runs' labels. A run whose CSV lacks the column is left out; when none has
    it nothing is written and the list is empty. Drawn with PIL only; written atomically as a PNG.
    """
    from PIL import Image, ImageDraw

    series, labels = [], []
    for label, path in csv_paths.items():
        data = read_metric(path, key)
        if data is None or len(data[0]) == 0:
            continue
        steps, values = data
        series.append((steps, values, moving_average(values, max(1, round(len(values) / 25)))))
        labels.append(label)
    if not series:
        return []
    width, height = size
    left, right, top, bottom = 70, 16, 30, 42
    pw, ph = width - left - right, height - top - bottom
    x_lo = min(float(s.min()) for s, _, _ in series)
    x_hi = max(max(float(s.max()) for s, _, _ in series), x_lo + 1.0)
    y_lo, y_hi = _value_range(series)

    def xy(steps: np.ndarray, values: np.ndarray) -> list[tuple[float, float]]:  # plot-area pixel coordinates
        x = (steps - x_lo) / (x_hi - x_lo) * (pw - 1)
        y = (y_hi - values) / (y_hi - y_lo) * (ph - 1)
        return list(zip(x.tolist(), y.tolist()))

    area = Image.new("RGB", (pw, ph), "white")  # curves drawn here: whatever leaves the area is clipped
    draw = ImageDraw.Draw(area)
    colours = [_PALETTE[k % len(_PALETTE)] for k in range(len(series))]
    for (steps, values, _), colour in zip(series, colours):  # every raw curve first, faint ...
        if len(steps) > 1:
            draw.line(xy(steps, values), fill=tuple(int(255 - 0.3 * (255 - c)) for c in colour), width=1)
    for (steps, values, smooth), colour in zip(series, colours):  # ... then the moving averages over them
        if len(steps) > 1:
            draw.line(xy(steps, smooth), fill=colour, width=2)
        else:
            (x, y), = xy(steps, values)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(area, (left, top))
    _axes(ImageDraw.Draw(canvas), (left, top, pw, ph), (x_lo, x_hi), (y_lo, y_hi), title or key)
    _legend(ImageDraw.Draw(canvas), labels, left + pw - 8, top + 8)
    save_png(out_png, np.asarray(canvas))
    return labels


def _axes(draw, box: tuple[int, int, int, int], xr: tuple[float, float], yr: tuple[float, float], title: str) -> None:
    """Frame, ticks with labels and grid lines, the title above and "step" below."""
    left, top, pw, ph = box
    font, grid, ink = _font(12), (225, 225, 225), (60, 60, 60)
    for v in nice_ticks(*xr, count=6):
        x = left + (v - xr[0]) / (xr[1] - xr[0]) * (pw - 1)
        draw.line([(x, top + ph), (x, top + ph + 4)], fill=ink)
        draw.text((x, top + ph + 6), f"{v:.6g}", fill=ink, font=font, anchor="mt")
    for v in nice_ticks(*yr, count=5):
        y = top + (yr[1] - v) / (yr[1] - yr[0]) * (ph - 1)
        draw.line([(left, y), (left + pw - 1, y)], fill=grid)
        draw.line([(left - 4, y), (left, y)], fill=ink)
        draw.text((left - 6, y), f"{v:.4g}", fill=ink, font=font, anchor="rm")
    draw.rectangle([left - 1, top - 1, left + pw, top + ph], outline=ink)
    draw.text((left + pw / 2, top + ph + 24), "step", fill=ink, font=font, anchor="mt")
    draw.text((left + pw / 2, top / 2), title, fill=(0, 0, 0), font=_font(14), anchor="mm")


def _legend(draw, labels: Sequence[str], right: int, top: int) -> None:
    """A boxed legend whose top-right corner is at (right, top): a colour swatch and the label per run."""
    font = _font(12)
    texts = [label if len(label) <= 32 else label[:31] + "…" for label in labels]
    width = max(draw.textlength(t, font=font) for t in texts) + 34
    height = 18 * len(texts) + 8
    draw.rectangle([right - width, top, right, top + height], fill="white", outline=(160, 160, 160))
    for k, text in enumerate(texts):
        y = top + 4 + 18 * k + 9
        draw.line([(right - width + 6, y), (right - width + 24, y)], fill=_PALETTE[k % len(_PALETTE)], width=3)
        draw.text((right - width + 30, y), text, fill=(0, 0, 0), font=font, anchor="lm")
