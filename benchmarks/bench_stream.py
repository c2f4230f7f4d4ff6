"""Streaming a LLaVA-558K-sized stage-1 JSON: peak RSS of silo.stream against json.load, in one run.

Generates a LLaVA stage-1 JSON with ``--records`` records (default 558,128, the size of LLaVA-1.5's
``blip_laion_cc_sbu_558k.json``) shaped like the real one: id, image path, a human turn with
``<image>`` and a BLIP-style caption; every record names the same (empty) image file, since
the reader checks that it exists. Each measurement runs in a fresh process and reports its peak
RSS (``ru_maxrss``): streaming every record through ``silo.stream.stream_records`` (all record
checks, image decoding off), the imports alone, and for the ratio ``json.load`` of the whole
file. Ends with one JSON line.

    python benchmarks/bench_stream.py [--records 558128] [--keep FILE] [--no-json-load]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("a", "the", "man", "woman", "dog", "cat", "on", "in", "with", "red", "blue", "street", "city", "beach",
         "sitting", "standing", "holding", "photo", "of", "old", "new", "house", "tree", "car", "near", "small")
PROMPTS = ("<image>\nDescribe the image concisely.", "Render a clear and concise summary of the photo.\n<image>",
           "<image>\nGive a brief description of the image.", "Share a concise interpretation of the image provided.\n<image>")


def generate(path: Path, n: int, image: str = "{i:09d}.jpg", seed: int = 0) -> int:
    """Write ``n`` LLaVA stage-1 records to ``path`` (streamed out, never held); returns bytes.
    ``image`` is formatted with the record index ``i``."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n):
            cap = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
            rec = {"id": f"{i:09d}", "image": image.format(i=i),
                   "conversations": [{"from": "human", "value": rng.choice(PROMPTS)}, {"from": "gpt", "value": cap}]}
            fh.write(("  " if i == 0 else ",\n  ") + json.dumps(rec))
        fh.write("\n]\n")
    return path.stat().st_size


_STREAM = """
import resource, sys, time
from fedalign.silo.stream import stream_records
t0 = time.perf_counter(); n = 0; chars = 0
for s in stream_records(sys.argv[1], policy="fail", check_images=False, image_root=sys.argv[2]):
    n += 1; chars += len(s.caption)
print(n, chars, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_LOAD = """
import json, resource, sys, time
t0 = time.perf_counter()
with open(sys.argv[1]) as fh:
    data = json.load(fh)
print(len(data), 0, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_BASE = """
import resource, fedalign.silo.stream
print(0, 0, 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(code: str, *args: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    n, _, sec, kib = out.stdout.split()
    return int(n), float(sec), int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=558_128)
    ap.add_argument("--keep", type=Path, help="write the generated file here (default: a temporary file)")
    ap.add_argument("--no-json-load", action="store_true", help="skip the json.load comparison")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = a.keep or Path(tmp) / "llava_558k.json"
        (Path(tmp) / "image.jpg").touch()
        t0 = time.perf_counter()
        size = generate(path, a.records, image="image.jpg")
        gen_s = time.perf_counter() - t0
        _, _, base_mib = run(_BASE)
        n, stream_s, stream_mib = run(_STREAM, str(path), tmp)
        fig = {"benchmark": "stream", "records": n, "file_mib": size / 2**20, "generate_seconds": gen_s,
               "stream_seconds": stream_s, "stream_records_per_s": n / stream_s, "stream_peak_rss_mib": stream_mib,
               "import_only_peak_rss_mib": base_mib, "goal_rss_mib": 500}
        if not a.no_json_load:
            _, load_s, load_mib = run(_LOAD, str(path))
            fig.update(json_load_seconds=load_s, json_load_peak_rss_mib=load_mib,
                       rss_json_load_over_stream=load_mib / stream_mib)
    print(f"{n:,} records ({fig['file_mib']:.0f} MiB of JSON) streamed in {stream_s:.1f}s "
          f"({fig['stream_records_per_s']:,.0f}/s), peak RSS {stream_mib:.0f} MiB "
          f"(the imports alone {base_mib:.0f} MiB; goal < 500)")
    if "json_load_peak_rss_mib" in fig:
        print(f"json.load of the same file: peak RSS {fig['json_load_peak_rss_mib']:.0f} MiB "
              f"({fig['rss_json_load_over_stream']:.1f}x the stream), {fig['json_load_seconds']:.1f}s")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
