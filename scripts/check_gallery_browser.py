#!/usr/bin/env python
"""Open a ``dream3d batch`` gallery in headless Chromium: every turntable must decode and the table must sort.

    python scripts/check_gallery_browser.py <batch folder>/gallery.html [--out shot.png] [--timeout 60]

The batch folder is served on 127.0.0.1 and the page opened as ``check_report_browser.py`` opens a compare
report (the same wait for every video's first decoded frame, the same blank-frame test). Then the check clicks
the IoU header twice and reads the column: ascending, then descending, with the empty (n/a) cells last both
times. Prints the videos decoded and the sort orders; exit 1 with one line naming what failed.
Chromium: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_check  # noqa: E402
import check_report_browser as media  # noqa: E402

# the report check's result, plus the IoU column as read after one click on its header and after a second
_BODY, _END = media._RESULT.rsplit("};", 1)  # the report check's returned object, closed by its last "};"
_RESULT = _BODY + """,
           sort: (() => {
             const heads = [...document.querySelectorAll('#results th')];
             const col = heads.findIndex((h) => h.textContent === 'IoU');
             if (col < 0) return null;
             const read = () => [...document.querySelectorAll('#results tbody tr')].map((r) => r.cells[col].dataset.v);
             heads[col].click(); const up = read(); heads[col].click(); const down = read();
             return { up, down };
           })() };""" + _END


def sort_problems(sort) -> list[str]:
    """The IoU column must go up, then down, numbers first and n/a cells last each time."""
    if not sort:
        return ["no IoU column in the table"]
    found = []
    for name, values, sign in (("ascending", sort["up"], 1), ("descending", sort["down"], -1)):
        numbers = [float(v) for v in values if v != ""]
        if values[:len(numbers)] != [v for v in values if v != ""] or any(v == "" for v in values[:len(numbers)]):
            found.append(f"sorting by IoU {name} did not put the n/a cells last ({values})")
        elif any(sign * (b - a) < 0 for a, b in zip(numbers, numbers[1:])):
            found.append(f"sorting by IoU {name} gave {values}")
    return found


def check(gallery: Path, out: Path, timeout: float = 60.0, chromium: str = browser_check.DEFAULT_CHROMIUM,
          install: bool = True) -> tuple[dict, list[str]]:
    """The report check (every video decodes) with the sort read by :data:`_RESULT` and checked too."""
    return media.check(gallery, out, timeout, chromium=chromium, install=install, result_js=_RESULT,
                       more_problems=lambda result: sort_problems(result.get("sort")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gallery", type=Path, help="gallery.html of a dream3d batch folder")
    parser.add_argument("--out", type=Path, help="full-page screenshot PNG (default: <gallery>.browser.png beside it)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--chromium", default=browser_check.DEFAULT_CHROMIUM)
    parser.add_argument("--no-install", dest="install", action="store_false",
                        help="do not install playwright-core into .cache/npm when it is missing")
    args = parser.parse_args(argv)
    if not args.gallery.is_file():
        print(f"check_gallery_browser: {args.gallery} not found", file=sys.stderr)
        return 2
    out = args.out or args.gallery.with_suffix(".browser.png")
    report, found = check(args.gallery, out, args.timeout, args.chromium, args.install)
    result = report.get("result") or {}
    videos = result.get("videos", [])
    ok = sum(media.video_ok(v) for v in videos)
    sort = result.get("sort") or {}
    print(f"{ok}/{len(videos)} videos decoded; IoU ascending {sort.get('up')}, descending {sort.get('down')}; "
          f"screenshot {out}")
    if found:
        print("check_gallery_browser: " + "; ".join(found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
