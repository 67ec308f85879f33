#!/usr/bin/env python
"""Open a ``dream3d compare`` report in headless Chromium and check that every video and image loads.

    python scripts/check_report_browser.py <compare folder>/report.html [--out shot.png] [--timeout 60]

The report's folder is served on 127.0.0.1 and the page opened in Debian's ``chromium`` (driven by
playwright-core from ``.cache/npm``, see :mod:`browser_check`). The check waits until every ``<video>`` has
decoded a frame (``readyState >= 2``, HAVE_CURRENT_DATA, and ``videoWidth > 0``) and every ``<img>`` has
``naturalWidth > 0``, or one of them fails; then it draws each video's current frame into a canvas (a decoded
turntable frame is not one flat colour), takes a full-page screenshot and prints the figures: videos and images
loaded, the page's size, seconds. Exit 1 with one line naming the first files that did not load (or a failed
request, or a blank frame), 0 when everything did. Chromium: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_check  # noqa: E402

# Polled until truthy: once every video has decoded a frame (or failed) and every image has loaded (or failed).
# A looping video's readyState drops back to HAVE_METADATA at each seek to the start, so the first moment a
# video has a current frame is recorded on the element (__frame: that frame drawn into a canvas, its luminance
# range and opaque fraction) rather than read again at the end.
_DONE = """(() => {
  const frame = (v) => {
    const canvas = document.createElement('canvas');
    canvas.width = v.videoWidth; canvas.height = v.videoHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(v, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let lo = 255, hi = 0, opaque = 0;
    for (let i = 0; i < data.length; i += 4) {
      const y = (data[i] + data[i + 1] + data[i + 2]) / 3;
      lo = Math.min(lo, y); hi = Math.max(hi, y); opaque += data[i + 3] > 0;
    }
    return { readyState: v.readyState, width: v.videoWidth, height: v.videoHeight, range: hi - lo,
             opaque: opaque / (data.length / 4) };
  };
  const videos = [...document.querySelectorAll('video')], images = [...document.querySelectorAll('img')];
  for (const v of videos) if (!v.__frame && v.readyState >= 2 && v.videoWidth > 0) v.__frame = frame(v);
  const settled = (v) => v.__frame || v.error !== null || v.networkState === HTMLMediaElement.NETWORK_NO_SOURCE;
  return document.readyState === 'complete' && videos.every(settled) && images.every((i) => i.complete);
})()"""

# the state of every video (as first decoded, else as now) and image, the page's size, codec support
_RESULT = """(() => {
  const videos = [...document.querySelectorAll('video')].map((v) => ({
    src: v.currentSrc || (v.querySelector('source') || {}).src || v.src, networkState: v.networkState,
    error: v.error ? v.error.code + ' ' + (v.error.message || '') : null, frame: v.__frame || null,
    readyState: v.__frame ? v.__frame.readyState : v.readyState, width: v.__frame ? v.__frame.width : v.videoWidth,
    height: v.__frame ? v.__frame.height : v.videoHeight }));
  const images = [...document.querySelectorAll('img')].map((i) => ({
    src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight }));
  const probe = document.createElement('video');
  return { videos, images, title: document.title,
           page: { width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight },
           h264: probe.canPlayType('video/mp4; codecs="avc1.42E01E"'), vp9: probe.canPlayType('video/webm; codecs="vp9"') };
})()"""


def video_ok(video: dict) -> bool:
    """Decoded: a current frame, a width, and that frame is not one flat colour."""
    frame = video.get("frame") or {}
    return video["readyState"] >= 2 and video["width"] > 0 and frame.get("range", 0) > 0 and frame.get("opaque", 0) > 0


def problems(report: dict, base: str) -> list[str]:
    """What did not load, one short phrase each (paths relative to the report's folder)."""
    def short(url: str) -> str:
        return urllib.parse.unquote(url[len(base):] if url.startswith(base) else url)

    result = report.get("result") or {}
    failed: dict[str, str] = {}
    for item in report.get("failed", []):  # the first reason per URL: an HTTP status before the abort it causes
        failed.setdefault(item["url"], item["error"])
    found = []
    for video in (v for v in result.get("videos", []) if not video_ok(v)):
        if video["readyState"] >= 2 and video["width"] > 0:
            why = "the decoded frame is blank"
        elif video["src"] in failed:
            why = failed.pop(video["src"])
        elif video["error"] or video.get("networkState") == 3:  # NETWORK_NO_SOURCE: no source it can play
            why = video["error"] or "no playable source: not a video, or a codec this browser lacks"
        else:
            why = f"readyState {video['readyState']}, {video['width']}x{video['height']}"
        found.append(f"video {short(video['src'] or '?')} ({why})")
    for image in (i for i in result.get("images", []) if not i["width"] > 0):
        found.append(f"image {short(image['src'])} ({failed.pop(image['src'], 'naturalWidth 0')})")
    return found + [f"request {short(url)} ({error})" for url, error in failed.items()]


def check(report_html: Path, out: Path, timeout: float = 60.0, width: int = 1280,
          chromium: str = browser_check.DEFAULT_CHROMIUM, install: bool = True, result_js: str = _RESULT,
          more_problems=lambda result: []) -> tuple[dict, list[str]]:
    """Open the report in headless Chromium -> (the driver's report, the problems found). A page with more to check
    (the batch gallery) passes a ``result_js`` that extends :data:`_RESULT` and ``more_problems(result)``."""
    folder = report_html.resolve().parent
    with browser_check.serve(folder) as base:
        report = browser_check.open_page(base + urllib.parse.quote(report_html.name), out, _DONE, result_js,
                                         width=width, height=800, full_page=True, timeout=timeout,
                                         chromium=chromium, install=install)
    result = report.get("result") or {}
    if "videos" not in result:
        return report, [result.get("error") or "the page did not load"]
    found = problems(report, base) + more_problems(result)
    if report.get("timedOut") and not found:
        found.append(f"the page did not settle within {timeout:g} s")
    return report, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html of a dream3d compare folder")
    parser.add_argument("--out", type=Path, help="full-page screenshot PNG (default: <report>.browser.png beside it)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the browser to start and load all")
    parser.add_argument("--width", type=int, default=1280, help="viewport width, pixels")
    parser.add_argument("--chromium", default=browser_check.DEFAULT_CHROMIUM)
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing npm packages")
    parser.add_argument("--verbose", action="store_true", help="print the page's console messages")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        sys.exit(f"no such report file: {args.report}")
    out = args.out or args.report.with_name(args.report.stem + ".browser.png")
    report, found = check(args.report, out, args.timeout, args.width, args.chromium, not args.no_install)
    if args.verbose:
        for line in report.get("logs", []):
            print(f"  console {line}", file=sys.stderr)
    result = report.get("result") or {}
    videos, images = result.get("videos", []), result.get("images", [])
    page = result.get("page") or {}
    figures = (f"{sum(map(video_ok, videos))}/{len(videos)} videos decoded (H.264 {result.get('h264') or 'no'}), "
               f"{sum(i['width'] > 0 for i in images)}/{len(images)} images loaded, page "
               f"{page.get('width', '?')}x{page.get('height', '?')} px, Chromium {report.get('version')}, "
               f"{report['seconds']:.1f} s")
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        print(f"{args.report}: FAIL: {'; '.join(found[:3])}{more} ({figures})", file=sys.stderr)
        return 1
    print(f"{args.report}: ok: {figures}; screenshot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
