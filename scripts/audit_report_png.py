"""Render an audit report's HTML (``silo audit report --html``) to a PNG with headless Chromium.

    python scripts/audit_report_png.py REPORT.html OUT.png [--width 1100] [--height 2400]

Needs the ``chromium`` binary (Debian: ``apt-get install -y chromium``). The page is
self-contained, so Chromium runs with networking off. docs/audit-report.png was made this way
from the quickstart's hospital-a (see docs/compliance.md).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def render(html: Path, png: Path, *, width: int, height: int, timeout: float = 120) -> None:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        raise SystemExit("no chromium binary found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png.resolve()}", html.resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not png.exists():
        raise SystemExit(f"chromium failed ({res.returncode}): {res.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=2400)
    a = ap.parse_args(argv)
    render(a.html, a.png, width=a.width, height=a.height)
    print(f"wrote {a.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
