"""Open a page in headless Chromium and wait for it: the browser plumbing of the check_*_browser.py scripts.

A folder is served on 127.0.0.1 (:func:`serve`, any free port, quiet, with the MIME types of GLB, MP4 and WebM)
and :func:`open_page` drives Debian's ``chromium`` through playwright-core (installed into ``.cache/npm`` by
:mod:`npm_local`): a fresh user data directory, the page loaded, a JavaScript *done* expression polled until
it is truthy or the timeout passes, a *result* expression evaluated either way, a screenshot (optionally of
the full page). Failed requests (HTTP status >= 400 or network errors) and console messages come back with
the result, so a check can say which file did not load. Not part of dream3d itself, nor of the test suite's
required tools: CI has no Chromium.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import npm_local  # noqa: E402

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--autoplay-policy=no-user-gesture-required",
]

# argv: node_modules, chromium, url, screenshot path, width, height, timeout ms, user data dir, flags (JSON),
# done expression, result expression, full page ("1"/"0"). Prints one JSON line.
_DRIVER = r"""
const [modules, chromium, url, out, width, height, timeoutMs, userDataDir, flags, doneExpr, resultExpr, full]
  = process.argv.slice(1);
const { chromium: browserType } = require(modules + '/playwright-core');
(async () => {
  const logs = [], failed = [];
  const context = await browserType.launchPersistentContext(userDataDir, {
    executablePath: chromium, headless: true, args: JSON.parse(flags),
    viewport: { width: +width, height: +height }, deviceScaleFactor: 1, timeout: +timeoutMs,
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => logs.push(m.type() + ': ' + m.text()));
    page.on('pageerror', (e) => logs.push('pageerror: ' + e.message));
    page.on('requestfailed', (r) => failed.push({ url: r.url(), error: (r.failure() || {}).errorText || 'failed' }));
    page.on('response', (r) => { if (r.status() >= 400) failed.push({ url: r.url(), error: 'HTTP ' + r.status() }); });
    const start = Date.now();
    await page.goto(url, { timeout: +timeoutMs });
    let timedOut = false;
    try {
      await page.waitForFunction(doneExpr, null, { timeout: Math.max(1, +timeoutMs - (Date.now() - start)) });
    } catch (err) {
      timedOut = true;
    }
    const result = await page.evaluate(resultExpr);
    await page.screenshot({ path: out, fullPage: full === '1' });
    console.log(JSON.stringify({ result, timedOut, version: context.browser() ? context.browser().version() : null,
                                 logs, failed }));
  } finally {
    await context.close();
  }
})().catch((err) => {
  console.log(JSON.stringify({ result: { ok: false, error: String(err.message || err).split('\n')[0] } }));
  process.exit(3);
});
"""


class QuietHandler(SimpleHTTPRequestHandler):
    """Static files with the MIME types the checks need, and no request log on stderr."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary", ".mp4": "video/mp4", ".webm": "video/webm"}

    def log_message(self, *args) -> None:  # keep the script's output to its verdict
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) while the block runs -> the base URL ending in ``/``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def require_chromium(chromium: str = DEFAULT_CHROMIUM) -> None:
    """Exit with one line when ``chromium`` is neither a file nor on the PATH."""
    if not Path(chromium).exists() and shutil.which(chromium) is None:
        sys.exit(f"chromium not found at {chromium} (apt-get install -y chromium)")


def open_page(
    url: str, screenshot: Path, done: str, result: str, width: int = 1280, height: int = 800,
    full_page: bool = False, timeout: float = 90.0, chromium: str = DEFAULT_CHROMIUM, install: bool = True,
    packages: tuple[str, ...] = ("playwright-core",),
) -> dict:
    """Load ``url`` in headless Chromium, wait until the JS expression ``done`` is truthy (at most ``timeout``
    seconds), evaluate the JS expression ``result`` and screenshot to ``screenshot``.

    Returns ``{"result": <the page's value>, "timedOut", "version", "logs", "failed": [{url, error}], "seconds"}``;
    when the driver itself fails, ``result`` is ``{"ok": False, "error": <one line>}``. ``packages``: the npm
    packages to make sure of first (playwright-core, and whatever the page needs such as three).
    """
    require_chromium(chromium)
    modules = npm_local.ensure(list(dict.fromkeys(["playwright-core", *packages])), install=install)
    with tempfile.TemporaryDirectory(prefix="browser-check-") as profile:  # a new, empty user data dir every run
        start = time.perf_counter()
        done_run = subprocess.run(
            ["node", "-e", _DRIVER, str(modules), chromium, url, str(Path(screenshot).resolve()), str(width),
             str(height), str(int(timeout * 1000)), profile, json.dumps(CHROMIUM_FLAGS), done, result,
             "1" if full_page else "0"],
            capture_output=True, text=True, timeout=timeout * 2 + 30,
        )
        seconds = time.perf_counter() - start
    lines = [line for line in done_run.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done_run.stderr.strip().splitlines() or ["no output"])[-1]
        return {"result": {"ok": False, "error": f"browser driver failed (exit {done_run.returncode}): {tail}"},
                "seconds": seconds}
    report = json.loads(lines[-1])
    report["seconds"] = seconds
    return report
