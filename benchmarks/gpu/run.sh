#!/usr/bin/env bash
# One call on a GPU machine that has Python and PyTorch but none of histosynth's other packages:
# install them from carried wheels, then the self-check, the 256 px training benchmark with ADA
# active and the demo with gan.gpus: 1, written to one markdown file (benchmarks/gpu/run.py).
#
#   here:        python benchmarks/gpu/wheels.py --out .whl        # once; .whl is git-ignored
#   GPU machine: bash benchmarks/gpu/run.sh --wheels .whl --out "$OUT/gpu-results.md"
#   CPU test:    bash benchmarks/gpu/run.sh --device cpu --quick --out /tmp/gpu-results.md
#
# Without --wheels (or when every package imports already) nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
t0=$(date +%s)
if [ -n "$WHEELS" ]; then
  SITE=${HS_SITE:-/tmp/hs-site}
  # --no-deps: the wheels are the closure of what the machine lacks (benchmarks/gpu/wheels.py)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu/run.sh: installing the wheels from $WHEELS failed" >&2; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
fi
if ! "$PY" -c "import histosynth" 2>/dev/null; then
  # run from this checkout: its src/ on the path, and a histosynth command for the workflow's rules
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! command -v histosynth >/dev/null 2>&1; then
  BIN=$(mktemp -d)
  printf '#!/bin/sh\nexec %s -m histosynth.cli "$@"\n' "$(command -v "$PY")" > "$BIN/histosynth"
  chmod +x "$BIN/histosynth"
  export PATH="$BIN:$PATH"
fi
exec "$PY" benchmarks/gpu/run.py --install-seconds $(( $(date +%s) - t0 )) ${ARGS[@]+"${ARGS[@]}"}
