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
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_check  # noqa: E402
import npm_local  # noqa: E402

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


def render(glb: Path, out: Path, size: int = 512, timeout: float = 90.0,
           chromium: str = browser_check.DEFAULT_CHROMIUM, install: bool = True) -> dict:
    """Serve ``glb``, render it in headless Chromium, screenshot to ``out`` -> the page's result + timings."""
    browser_check.require_chromium(chromium)
    modules = npm_local.ensure(["three", "playwright-core"], install=install)
    with tempfile.TemporaryDirectory(prefix="glb-check-") as site:
        shutil.copyfile(glb, Path(site) / "model.glb")
        os.symlink(modules / "three", Path(site) / "three")
        (Path(site) / "index.html").write_text(_PAGE.replace("SIZE", str(int(size))).replace("MODEL", "model.glb"))
        with browser_check.serve(Path(site)) as base:
            report = browser_check.open_page(base + "index.html", out, "window.__result !== undefined",
                                             "window.__result", size, size, timeout=timeout, chromium=chromium,
                                             install=install, packages=("three",))
    if report.get("result") is None:
        report["result"] = {"ok": False, "error": f"the page did not finish within {timeout:g} s"}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("--out", type=Path, help="screenshot PNG (default: <glb>.browser.png beside the GLB)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds for the browser to start and render")
    parser.add_argument("--chromium", default=browser_check.DEFAULT_CHROMIUM)
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
