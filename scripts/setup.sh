#!/usr/bin/env bash
# Create .venv in the checkout (first use, or after pyproject.toml changed) and install dream3d into it.
# torch: DREAM3D_TORCH picks the requirement installed before the project (default torch==2.13.0, which
# on the project's CPU machines is a local CPU build; a plain range would pull a multi-GB CUDA build).
# Set DREAM3D_TORCH=torch (or a CUDA wheel spec) on a GPU machine; an importable torch is kept as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
stamp=.venv/.dream3d-installed
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
echo "dream3d: setting up .venv (one time)..." >&2
.venv/bin/python -m pip install -qq --upgrade pip >&2
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -qq "${DREAM3D_TORCH:-torch==2.13.0}" >&2
fi
.venv/bin/python -m pip install -qq -e ".[dev,batch]" >&2
touch "$stamp"
