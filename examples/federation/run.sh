#!/usr/bin/env bash
# README.md, "Running a real federation", command for command: an aggregator and three silos
# (hospital-a, -b, -c) on 127.0.0.1 with the configs next to this script (the embedded world's
# tiny models, SecAgg over ZeroMQ + CURVE, DP on, 2 rounds of Fed-CMP). The test suite runs it
# (tests/e2e/test_federation_example.py) and checks that its commands are the README's.
#
#   examples/federation/run.sh [WORKDIR]      default runs/federation; FEDALIGN_PORT picks the port
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-runs/federation}
port=${FEDALIGN_PORT:-5555}
if [ -e "$work/keys" ]; then
  echo "error: $work already holds a federation (keys/); give another WORKDIR or remove it" >&2
  exit 2
fi
mkdir -p "$work"
cp "$here"/aggregator.toml "$here"/public.toml "$here"/hospital-?.toml "$work"/
cd "$work"
sed -i "s/127\.0\.0\.1:5555/127.0.0.1:$port/" aggregator.toml hospital-?.toml
silos="hospital-a hospital-b hospital-c"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
waitall() {  # wait for every pid given; fail (naming the log) if any failed
  local rc=0
  for p in "$@"; do wait "$p" || { echo "error: a process exited with $? (see the logs in $PWD)" >&2; rc=1; }; done
  return $rc
}

# keys and the roster
aggregator keygen --out keys
for s in $silos; do
  silo keygen --name $s --out keys --roster roster.toml
done

# the initial projector, from the projector each silo's models need
ds=()
for s in $silos; do
  silo describe --config $s.toml --out $s.card.json & ds+=($!)
done
waitall "${ds[@]}"
aggregator init --model-card hospital-a.card.json --model-card hospital-b.card.json --model-card hospital-c.card.json --out init_projector.safetensors
silo public-basis --config public.toml --init init_projector.safetensors --rank 8 --out public_basis.safetensors

# the run: the aggregator and the three silos
aggregator serve --config aggregator.toml > aggregator.log 2>&1 & pids+=($!)
for s in $silos; do
  silo train --config $s.toml > $s.log 2>&1 & pids+=($!)
done
waitall "${pids[@]}"
pids=()
tail -n 3 aggregator.log hospital-a.log
echo "federation done in $PWD: projector in hospital-a-out/mm_projector.safetensors, checkpoints in aggregator-out/"
