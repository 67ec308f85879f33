#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (issue 18): installs dream3d's missing dependencies from .whl/,
# builds nerfacc's CUDA extension, then runs each check under its own time limit and writes the figures to $OUT:
#   device_check.json  every part's status, exit code and seconds, the machine (GPU, driver, torch, commit)
#   device_check.log   everything the parts printed
#   fit_summary.json   (c) the default fit's summary.json (wall time per stage, peak GPU memory)
#   bench.json         (d) scripts/bench.py on CUDA, each accelerator on and off
#   sd_step.json       (e) Stable Diffusion-sized step times and peak memory (scripts/sd_step.py)
# The parts' limits add up to about 8 minutes (DEVICE_CHECK_SCALE=0.5 halves them). On a machine without CUDA it
# stops at once with one line and exit code 3. Here, first: .venv/bin/python scripts/fetch_wheels.py; then the
# device tool's run with carry [".whl"] and the command: bash scripts/device_check.sh
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ -x .venv/bin/python ]; then py="${PYTHON:-$root/.venv/bin/python}"; else py="${PYTHON:-python3}"; fi

if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "device_check: no CUDA device is present (torch.cuda.is_available() is false for $py); run it on the GPU machine" >&2
  exit 3
fi

OUT="${OUT:-$root/outputs/device-check}"
mkdir -p "$OUT"
log="$OUT/device_check.log"
parts="$(mktemp)"
work="$(mktemp -d)"
scale="${DEVICE_CHECK_SCALE:-1}"
: >"$log"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR="$work/torch_extensions" MAX_JOBS="${MAX_JOBS:-16}"
start=$(date +%s)

# part NAME SECONDS COMMAND...: run under `timeout`, record status and seconds, keep going whatever happens
part() {
  local name=$1 limit secs rc status t0 t1
  limit=$(awk -v s="$2" -v k="$scale" 'BEGIN { printf "%d", s * k }')
  shift 2
  echo "=== $name (limit ${limit}s): $*" >>"$log"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  printf '{"part": "%s", "status": "%s", "rc": %d, "seconds": %s, "limit": %d}\n' "$name" "$status" "$rc" "$secs" \
    "$limit" >>"$parts"
  echo "device_check: $name: $status (rc $rc) in ${secs}s"
  return $rc
}

# 1. dependencies: the wheels that travelled (.whl, carried), into /tmp/site; dream3d itself from this checkout
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "device_check: no wheels in .whl/; run .venv/bin/python scripts/fetch_wheels.py here and carry .whl" >&2
  exit 2
fi
part install 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl
export PYTHONPATH="$root:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

# the machine, for the record
part environment 20 "$py" - "$OUT/environment.json" <<'EOF'
import json, subprocess, sys, torch
def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "driver": run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]),
        "commit": run(["git", "rev-parse", "HEAD"]) or "unknown (no .git here)", "python": sys.version.split()[0]}
for name in ("diffusers", "transformers", "peft", "pytorch_lightning", "nerfacc", "tinycudann", "nvdiffrast"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", "present")
    except Exception as exc:
        info[name] = f"absent ({type(exc).__name__})"
print(json.dumps(info, indent=2))
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF

# 2. nerfacc's CUDA extension, compiled for this GPU only (the renderer's auto backend loads it after this)
arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null || echo 9.0)
part nerfacc-build 120 env TORCH_CUDA_ARCH_LIST="$arch" "$py" -c "
from dream3d.render import volume_nerfacc as v
why = v.why_unavailable()
print('nerfacc backend:', why or 'available')
raise SystemExit(1 if why else 0)"

# (a) the device tests on CUDA (DREAM3D_TEST_DEVICE=cuda: renderers incl. nerfacc against torch, fields, SDS/VSD
#     step, a short fit): the tests marked `device` (tests/conftest.py marks every test that takes the fixture)
part tests-cuda 90 env DREAM3D_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider -rs -m device tests

# (b) torch against nvdiffrast (skipped, saying why, without it) and the hash grid without tiny-cuda-nn, on CUDA
part raster-and-hashgrid 30 env DREAM3D_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider -rs \
  tests/test_raster_backends.py tests/test_fields.py

# (c) the default fit on the shipped prior (CPU: 188 s on 2 cores, docs/benchmarks.md)
part default-fit 90 "$py" -c "import sys; from dream3d.cli import main; sys.exit(main(sys.argv[1:]))" fit \
  prompt="a pineapple" device=cuda output_dir="$work/runs" name=pineapple --quiet
cp "$work"/runs/*/pineapple/summary.json "$OUT/fit_summary.json" 2>/dev/null  # <output_dir>/<default recipe>/<name>

# (d) the NeRF step split with each accelerator on and off
part bench 40 "$py" scripts/bench.py --device cuda --iters 5 --json "$OUT/bench.json"

# (e) Stable Diffusion-sized steps: dreamfusion (64 px -> 512), magic3d fine (512 px mesh), prolificdreamer (VSD)
part sd-step 90 "$py" scripts/sd_step.py --device cuda --iters 5 --warmup 2 --prior-dir "$work" \
  --json "$OUT/sd_step.json"

"$py" - "$parts" "$OUT" "$(( $(date +%s) - start ))" <<'EOF'
import json, pathlib, sys
parts = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out = pathlib.Path(sys.argv[2])
env = out / "environment.json"
record = {"environment": json.loads(env.read_text()) if env.is_file() else None, "parts": parts,
          "total_s": int(sys.argv[3])}
env.unlink(missing_ok=True)
(out / "device_check.json").write_text(json.dumps(record, indent=2))
print("device_check: " + ", ".join(f"{p['part']} {p['status']}" for p in parts) + f"; {record['total_s']} s")
EOF
rm -rf "$parts" "$work"
