"""benchmarks/slide_patches.py on a tiny slide: every reading path runs and is recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import slide_patches  # noqa: E402


def test_tiny_run_records_every_path(tmp_path: Path) -> None:
    out = tmp_path / "patches.json"
    slide_patches.main(["--size", "1024", "--patches", "8", "--patch", "64", "--tile", "128", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["mpp"], r["level"]) for r in rows[:6]] == [
        ("tifffile", 0.25, 0), ("openslide", 0.25, 0), ("tifffile", 0.5, 1), ("openslide", 0.5, 1),
        ("tifffile", 0.7, 1), ("openslide", 0.7, 1)]
    assert rows[6]["how"].startswith("annotated_images: 2 windows of 128 px") and rows[6]["patches"] == 8
    assert all(r["seconds_per_1000"] > 0 for r in rows)
