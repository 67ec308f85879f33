#!/usr/bin/env python
"""Render a GLB in headless Chromium with three.js and check that the screenshot shows something.

    python scripts/check_glb_browser.py model.glb [--out shot.png] [--size 512] [--timeout 90]

What a person opening the GLB in a browser viewer would see: the file is served on 127.0.0.1 next to a page
that loads it with three.js' GLTFLoader, frames its bounding box and renders it over a white background;
playwright-core drives Debian's ``chromium`` (WebGL through SwiftShader, no GPU) and takes a screenshot.
The check fails (exit 1, one line) when the page reports an error, times out, or the central region of the
screenshot is background only. three.js and playwright-core are installed into ``.cache/npm`` on first use;
Chromium is ``apt-get install -y chromium``. Not part of the test suite (it takes tens of seconds).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import npm_local  # noqa: E402

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>glb check</title><link rel="icon" href="data:,">
<style>html, body { margin: 0; background: #fff; overflow: hidden; }</style>
<script type="importmap">{"imports": {"three": "./three/build/three.module.js",
                                      "three/addons/": "./three/examples/jsm/"}}</script>
</head><body>
<script type="module">
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
const done = (result) => { window.__result = result; };
window.addEventListener("error", (e) => done({ ok: false, error: String(e.message) }));
try {
  const size = SIZE;
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(size, size);
  renderer.setClearColor(0xffffff, 1);
  document.body.appendChild(renderer.domElement);
  const gl = renderer.getContext();
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const glRenderer = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  const scene = new THREE.Scene();
  scene.add(new THREE.HemisphereLight(0xffffff, 0x888888, 2.0));
  const sun = new THREE.DirectionalLight(0xffffff, 2.0);
  sun.position.set(1, 2, 3);
  scene.add(sun);
  new GLTFLoader().load("./MODEL", (gltf) => {
    scene.add(gltf.scene);
    const box = new THREE.Box3().setFromObject(gltf.scene);
    if (box.isEmpty()) { done({ ok: false, error: "the GLB has no visible geometry" }); return; }
    const centre = box.getCenter(new THREE.Vector3());
    const radius = box.getSize(new THREE.Vector3()).length() / 2;
    const camera = new THREE.PerspectiveCamera(40, 1, radius / 100, radius * 100);
    const dir = new THREE.Vector3(0.5, 0.45, 1.0).normalize();  // front (+Z), a little from the right and above
    camera.position.copy(centre).addScaledVector(dir, radius / Math.sin(THREE.MathUtils.degToRad(18)));
    camera.lookAt(centre);
    renderer.render(scene, camera);
    let triangles = 0;
    gltf.scene.traverse((o) => { if (o.isMesh) triangles += (o.geometry.index ? o.geometry.index.count
                                                              : o.geometry.attributes.position.count) / 3; });
    requestAnimationFrame(() => done({ ok: true, triangles, glRenderer, three: THREE.REVISION }));
  }, undefined, (err) => done({ ok: false, error: "GLTFLoader: " + (err && err.message ? err.message : String(err)) }));
} catch (err) {
  done({ ok: false, error: String(err && err.message ? err.message : err) });
}
</script></body></html>
"""

_DRIVER = r"""
const [modules, chromium, url, out, size, timeoutMs, userDataDir, flags] = process.argv.slice(1);
const { chromium: browserType } = require(modules + '/playwright-core');
(async () => {
  const logs = [];
  const context = await browserType.launchPersistentContext(userDataDir, {
    executablePath: chromium, headless: true, args: JSON.parse(flags),
    viewport: { width: +size, height: +size }, deviceScaleFactor: 1, timeout: +timeoutMs,
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => logs.push(m.type() + ': ' + m.text()));
    page.on('pageerror', (e) => logs.push('pageerror: ' + e.message));
    await page.goto(url, { timeout: +timeoutMs });
    await page.waitForFunction(() => window.__result !== undefined, null, { timeout: +timeoutMs });
    const result = await page.evaluate(() => window.__result);
    await page.screenshot({ path: out });
    console.log(JSON.stringify({ result, version: context.browser() ? context.browser().version() : null, logs }));
  } finally {
    await context.close();
  }
})().catch((err) => { console.log(JSON.stringify({ result: { ok: false, error: String(err.message || err).split('\n')[0] } })); process.exit(3); });
"""


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary"}

    def log_message(self, *args) -> None:  # keep the script's output to its verdict
        pass


def screenshot_shows_object(path: Path, background=(255, 255, 255), threshold: int = 24,
                            min_fraction: float = 0.02) -> tuple[bool, float]:
    """Whether the central half of the screenshot has at least ``min_fraction`` non-background pixels."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    h, w = image.shape[:2]
    centre = image[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    differs = (np.abs(centre - np.array(background)).max(-1) > threshold).mean()
    return bool(differs >= min_fraction), float(differs)


def render(glb: Path, out: Path, size: int = 512, timeout: float = 90.0, chromium: str = "/usr/bin/chromium",
           install: bool = True) -> dict:
    """Serve ``glb``, render it in headless Chromium, screenshot to ``out`` -> the page's result + timings."""
    if not Path(chromium).exists() and shutil.which(chromium) is None:
        sys.exit(f"chromium not found at {chromium} (apt-get install -y chromium)")
    modules = npm_local.ensure(["three", "playwright-core"], install=install)
    with tempfile.TemporaryDirectory(prefix="glb-check-") as tmp:
        site, profile = Path(tmp) / "site", Path(tmp) / "profile"
        site.mkdir()
        profile.mkdir()  # a new, empty user data dir every run
        shutil.copyfile(glb, site / "model.glb")
        os.symlink(modules / "three", site / "three")
        (site / "index.html").write_text(_PAGE.replace("SIZE", str(int(size))).replace("MODEL", "model.glb"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
            start = time.perf_counter()
            done = subprocess.run(
                ["node", "-e", _DRIVER, str(modules), chromium, url, str(out.resolve()), str(size),
                 str(int(timeout * 1000)), str(profile), json.dumps(CHROMIUM_FLAGS)],
                capture_output=True, text=True, timeout=timeout * 2 + 30,
            )
            seconds = time.perf_counter() - start
        finally:
            server.shutdown()
            server.server_close()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"result": {"ok": False, "error": f"browser driver failed (exit {done.returncode}): {tail}"},
                "seconds": seconds}
    report = json.loads(lines[-1])
    report["seconds"] = seconds
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("--out", type=Path, help="screenshot PNG (default: <glb>.browser.png beside the GLB)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds for the browser to start and render")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing npm packages")
    parser.add_argument("--verbose", action="store_true", help="print the page's console messages")
    args = parser.parse_args(argv)
    if not args.glb.is_file():
        sys.exit(f"no such GLB file: {args.glb}")
    out = args.out or args.glb.with_name(args.glb.stem + ".browser.png")
    report = render(args.glb, out, args.size, args.timeout, args.chromium, install=not args.no_install)
    result = report["result"]
    if args.verbose:
        for line in report.get("logs", []):
            print(f"  console {line}", file=sys.stderr)
    if not result.get("ok"):
        print(f"{args.glb}: FAIL: {result.get('error')} ({report['seconds']:.1f} s)", file=sys.stderr)
        return 1
    shows, fraction = screenshot_shows_object(out)
    where = (f"{result.get('triangles', 0):.0f} triangles, three r{result.get('three')}, "
             f"{report.get('version')}, WebGL {result.get('glRenderer')}, {report['seconds']:.1f} s")
    if not shows:
        print(f"{args.glb}: FAIL: the screenshot {out} is blank in the centre ({fraction:.1%} non-background; {where})",
              file=sys.stderr)
        return 1
    print(f"{args.glb}: ok: screenshot {out} shows the model ({fraction:.0%} of the centre; {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
