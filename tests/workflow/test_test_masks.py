"""A test image's mask is an input of its evaluation only: editing it reruns evaluation and the report, never
the stain normalization, the patch extraction or the training (a dry run lists each job's inputs)."""

from __future__ import annotations

import re

import numpy as np
from test_workflow import smk, tiny_config, write_config

from histoflow.io import write_image


def _folder(root, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(root / "images" / f"im{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        labels = np.zeros((64, 64), np.uint16)
        labels[10:30, 10:30] = 1
        write_image(root / "masks" / f"im{i}.png", labels)


def _inputs(dry_run: str) -> dict[str, set[str]]:
    """rule name -> the union of its jobs' input files, from a dry run's listing."""
    out: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=\[.*?\]\n)|\n\n", dry_run):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        files = re.search(r"^\s+input: (.*)$", block, re.M)
        if rule and files:
            out.setdefault(rule.group(1), set()).update(f.strip() for f in files.group(1).split(","))
    return out


def test_test_masks_feed_evaluation_only(tmp_path):
    _folder(tmp_path / "train", 3)
    _folder(tmp_path / "test", 2)
    cfg = tiny_config()
    cfg["datasets"] = {
        "tr": {"images": str(tmp_path / "train" / "images"), "masks": str(tmp_path / "train" / "masks"),
               "split": "train"},
        "te": {"images": str(tmp_path / "test" / "images"), "masks": str(tmp_path / "test" / "masks"),
               "split": "test"},
    }
    cfg["models"] = {"a": cfg["models"]["a"]}
    cfg.pop("ensembles", None)
    (tmp_path / "run").mkdir()
    write_config(tmp_path / "run", cfg)
    inputs = _inputs(smk(tmp_path / "run", "-n").stdout)
    test_masks = {str(tmp_path / "test" / "masks" / f"im{i}.png") for i in range(2)}
    train_masks = {str(tmp_path / "train" / "masks" / f"im{i}.png") for i in range(3)}
    assert test_masks <= inputs["evaluate"]
    for rule in ("normalize_stain", "extract_patches", "fit_stain"):
        assert not test_masks & inputs.get(rule, set()), rule
    assert not train_masks & inputs["normalize_stain"]  # normalization reads images only
    assert train_masks <= inputs["extract_patches"]
