"""Ship the default world, or check the shipped copy against a rebuild (:mod:`fedalign.world.shipped`).

    python -m fedalign.world.ship --check    # rebuild from the code (about 2 min on 2 cores) and compare
    python -m fedalign.world.ship --write    # after a change to the world's code: ship the new build
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from fedalign.host.process import apply_process_defaults
from fedalign.world.build import _key, build_world
from fedalign.world.shipped import compare_worlds, shipped_files, shipped_world, write_shipped
from fedalign.world.spec import WorldSpec


def main(argv: list[str] | None = None) -> int:
    apply_process_defaults()
    ap = argparse.ArgumentParser(prog="python -m fedalign.world.ship", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="rebuild the default world and compare it with the shipped one")
    mode.add_argument("--write", action="store_true", help="ship the default world built by this code")
    args = ap.parse_args(argv)
    spec = WorldSpec()
    key = _key(spec)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_world(spec, cache_dir=tmp, use_shipped=False).vision_path.parent  # always from the code
        if args.write:
            dest = write_shipped(built, key)
            print(f"shipped {dest} ({sum(p.stat().st_size for p in shipped_files(dest)):,} bytes)")
            return 0
        ours = shipped_world(key)
        if ours is None:
            print(f"no valid shipped world for this code (key {key}): run `python -m fedalign.world.ship --write`",
                  file=sys.stderr)
            return 1
        diff = compare_worlds(ours, built)
    same = all(v == 0.0 for v in diff.values())
    print(f"rebuilt world-{key}: largest |Δ| vision {diff['vision']:.3g}, lm {diff['lm']:.3g} "
          f"({'bit-identical to the shipped copy' if same else 'NOT identical to the shipped copy'})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
