"""benchmarks/tta_ensemble.py on a small finished run built by hand: every model × TTA setting and
their ensemble are predicted, post-processed and scored; config files merge as Snakemake merges them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import yaml

from histoflow.io import write_image, write_json
from histoflow.models import build_model, save_model
from histoflow.synthetic.fibres import FibreParams, make_fibre_image

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_tta", REPO / "benchmarks" / "tta_ensemble.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def finished_run(root: Path) -> dict:
    for d in ("imgs", "masks", "res/normalized/mine"):
        (root / d).mkdir(parents=True)
    for i, stem in enumerate(("a", "b", "c")):
        img, lab = make_fibre_image(i, FibreParams(size=(64, 64), fibre_diameter=20))
        write_image(root / "imgs" / f"{stem}.png", img)
        write_image(root / "masks" / f"{stem}.png", lab.astype(np.uint16))
        write_image(root / "res" / "normalized" / "mine" / f"{stem}.png", img)
    cfg = {"results": "res", "device": "cpu",
           "datasets": {"mine": {"images": "imgs", "masks": "masks", "split": "test"},
                        "tr": {"images": "imgs", "masks": "masks", "split": "train"}},
           "models": {m: {"arch": "unet", "params": {"base_width": 4, "depth": 2},
                          "predict": {"tile": 64, "overlap": 16}}
                      for m in ("u1", "u2")},
           "postprocess": {"min_size": 5}}
    for seed, m in enumerate(("u1", "u2")):
        torch.manual_seed(seed)
        model = build_model("unet", in_channels=3, out_channels=1, base_width=4, depth=2)
        save_model(model, {"arch": "unet", "kwargs": {"in_channels": 3, "out_channels": 1, "base_width": 4, "depth": 2},
                           "threshold": 0.5, "target": "masks", "classes": []}, root / "res" / "models" / m)
    return cfg


def test_every_model_and_setting_and_the_ensemble_are_scored(tmp_path, monkeypatch):
    cfg = finished_run(tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"models": {"u2": {"predict": {"overlap": 8}}}}))
    monkeypatch.chdir(tmp_path)
    config = bench.merged_config([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert config["models"]["u2"]["predict"]["overlap"] == 8 and config["models"]["u2"]["predict"]["tile"] == 64
    assert config["models"]["u2"]["arch"] == "unet"  # a later file updates, it does not replace
    rows = bench.run(config, ["none", "dihedral"], None, "cpu")
    assert [(r["model"], r["tta"]) for r in rows] == [
        ("u1", "none"), ("u2", "none"), ("u1+u2", "none"),
        ("u1", "dihedral"), ("u2", "dihedral"), ("u1+u2", "dihedral")]
    for r in rows:
        assert r["dataset"] == "mine" and 0 <= r["pixel_f1_mean"] <= 1
    assert (tmp_path / "res" / "tta_ensemble" / "u1+u2" / "dihedral" / "mine" / "summary.json").exists()
    table = bench.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| mine | u1+u2 | dihedral |" in table
    write_json(tmp_path / "x.json", {"rows": rows})  # JSON-serialisable
