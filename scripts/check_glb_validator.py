#!/usr/bin/env python
"""Validate GLB files with the Khronos glTF validator (npm ``gltf-validator``, run by node).

    python scripts/check_glb_validator.py outputs/.../export/model.glb [more.glb ...] [--no-install] [--json]
    python scripts/check_glb_validator.py --install-only      # what .ci/run does, so the test runs

Installs the pinned validator into ``.cache/npm`` on first use. Prints one line per file with the number of
errors, warnings, infos and hints (and the first issues), and exits 1 when any file has errors, 2 when the
validator could not run. Warnings do not fail the check (``--strict`` makes them fail too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import npm_local  # noqa: E402

# Reads each file named on the command line, validates it, prints one JSON report per line.
_NODE = r"""
const fs = require('fs');
const validator = require(process.argv[1]);
(async () => {
  for (const file of process.argv.slice(2)) {
    try {
      const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)),
        {uri: file, maxIssues: 50, writeTimestamp: false});
      const issues = report.issues;
      console.log(JSON.stringify({file, version: report.validatorVersion, errors: issues.numErrors,
        warnings: issues.numWarnings, infos: issues.numInfos, hints: issues.numHints,
        messages: issues.messages.map(m => ({code: m.code, severity: m.severity, message: m.message,
                                              pointer: m.pointer}))}));
    } catch (err) {
      console.log(JSON.stringify({file, failure: String(err)}));
    }
  }
})();
"""
_SEVERITY = {0: "error", 1: "warning", 2: "info", 3: "hint"}


def validate(paths: list[Path], install: bool = True) -> list[dict]:
    """Validator reports (errors, warnings, infos, hints, messages; or failure) for each GLB."""
    modules = npm_local.ensure(["gltf-validator"], install=install)
    for path in paths:
        if not path.is_file():
            sys.exit(f"no such GLB file: {path}")
    done = subprocess.run(["node", "-e", _NODE, str(modules / "gltf-validator"), *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        sys.exit(f"gltf-validator crashed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("glb", nargs="*", type=Path)
    parser.add_argument("--install-only", action="store_true", help="install the validator (CI does this) and stop")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing the validator")
    parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON lines")
    args = parser.parse_args(argv)
    if args.install_only:
        npm_local.ensure(["gltf-validator"])
        return 0
    if not args.glb:
        parser.error("expected at least one GLB file")
    reports = validate(args.glb, install=not args.no_install)
    failed = crashed = False
    for r in reports:
        if args.json:
            print(json.dumps(r))
        if "failure" in r:
            crashed = True
            print(f"{r['file']}: validator could not read it: {r['failure']}", file=sys.stderr)
            continue
        bad = r["errors"] > 0 or (args.strict and r["warnings"] > 0)
        failed |= bad
        if not args.json:
            print(f"{r['file']}: {r['errors']} errors, {r['warnings']} warnings, {r['infos']} infos, "
                  f"{r['hints']} hints ({'FAIL' if bad else 'ok'}; glTF-Validator {r['version']})")
            for m in r["messages"][:10]:
                print(f"  {_SEVERITY.get(m['severity'], m['severity'])} {m['code']} at {m.get('pointer')}: {m['message']}")
    if len(reports) != len(args.glb):
        crashed = True
        print(f"validator reported on {len(reports)} of {len(args.glb)} files", file=sys.stderr)
    return 2 if crashed else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
