"""benchmarks/postprocess_sweep.py on a fabricated finished run: each setting of the grid is post-processed and
scored, the best is picked by the chosen figure, and only validation images (held out of the patch split) may be
swept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from histoflow.datasets import split_stems
from histoflow.io import InputError, write_image, write_json

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_sweep", REPO / "benchmarks" / "postprocess_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

STEMS = ["a", "b", "c", "d", "e"]
SEED, VAL_FRACTION = 0, 0.2


def finished_run(root: Path) -> tuple[dict, list[str]]:
    """Five 48² images with two square objects each; the 'model' predicted 0.7 inside the objects, 0.1 outside.

    The held-out stem's maps are written under ``val``; a config whose ``val`` dataset is that stem.
    """
    held_out = split_stems(STEMS, VAL_FRACTION, SEED)[1]
    for d in ("imgs", "masks", "res/normalized/val", "res/predictions/m/val"):
        (root / d).mkdir(parents=True)
    for stem in STEMS:
        labels = np.zeros((48, 48), np.uint16)
        labels[4:20, 4:20], labels[28:44, 26:42] = 1, 2
        image = np.full((48, 48, 3), 200, np.uint8)
        write_image(root / "imgs" / f"{stem}.png", image)
        write_image(root / "masks" / f"{stem}.png", labels)
        write_image(root / "res" / "normalized" / "val" / f"{stem}.png", image)
        write_image(root / "res" / "predictions" / "m" / "val" / f"{stem}.tif",
                    np.where(labels > 0, 0.7, 0.1).astype(np.float32))
    write_json(root / "res" / "models" / "m" / "spec.json", {"arch": "unet", "threshold": 0.5, "target": "masks"})
    cfg = {"results": "res", "device": "cpu", "seed": SEED,
           "datasets": {"tr": {"images": "imgs", "masks": "masks", "split": "train"},
                        "val": {"images": "imgs", "masks": "masks", "split": "test", "stems": held_out}},
           "patches": {"val_fraction": VAL_FRACTION},
           "models": {"m": {"arch": "unet"}},
           "postprocess": {"min_size": 5, "h": 2.0}}
    return cfg, held_out


def test_every_setting_is_scored_and_the_best_is_chosen(tmp_path, monkeypatch, capsys):
    cfg, _ = finished_run(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep.json"
    # 0.5 and the spec's 0.5 find both squares exactly; 0.8 is above every probability, so nothing is found
    sweep.main(["--configfile", str(tmp_path / "c.yaml"), "--dataset", "val", "--model", "m",
                "--threshold", "0.8", "spec", "0.5", "--min-size", "5", "300", "--out", str(out)])
    rows = sweep.read_json(out)["rows"]
    assert [(r["setting"]["threshold"], r["setting"]["min_size"]) for r in rows] == [
        (0.8, 5), (0.8, 300), ("spec (0.5)", 5), ("spec (0.5)", 300), (0.5, 5), (0.5, 300)]
    by = {(r["setting"]["threshold"], r["setting"]["min_size"]): r for r in rows}
    assert by[("spec (0.5)", 5)]["object_f1_pooled"] == 1.0 and by[(0.5, 5)]["aji_mean"] == 1.0
    assert by[(0.8, 5)]["object_f1_pooled"] == 0.0
    assert by[(0.5, 300)]["object_f1_pooled"] == 0.0  # both 16² = 256 px squares are under 300 px
    assert sweep.read_json(out)["chosen"] == {"threshold": "spec (0.5)", "min_size": 5}  # the first of the equals
    assert "best by object_f1_pooled" in capsys.readouterr().out


def test_spec_of_an_instance_model_is_the_merge_rule_cut(tmp_path, monkeypatch):
    cfg, _ = finished_run(tmp_path)
    # a Mask R-CNN run: its maps are sums of kept masks, and a null threshold means the merge rule's 0.9
    write_json(tmp_path / "res" / "models" / "m" / "spec.json",
               {"arch": "mask_rcnn", "target": "instances", "instances": True, "score_threshold": 0.5})
    cfg["models"]["m"]["arch"] = "mask_rcnn"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep.json"
    sweep.main(["--configfile", str(tmp_path / "c.yaml"), "--dataset", "val", "--model", "m",
                "--threshold", "spec", "0.5", "--out", str(out)])
    by = {r["setting"]["threshold"]: r for r in sweep.read_json(out)["rows"]}
    # the squares' 0.7 is under the merge rule's 0.9, so nothing is found there; a 0.5 cut finds both squares
    assert set(by) == {"spec (0.9)", 0.5}
    assert by["spec (0.9)"]["object_f1_pooled"] == 0.0 and by[0.5]["object_f1_pooled"] == 1.0


def test_best_is_the_lowest_hausdorff_and_the_highest_otherwise():
    rows = [{"setting": {"h": 1}, "object_f1_pooled": 0.8, "object_hausdorff_pooled": 50.0},
            {"setting": {"h": 2}, "object_f1_pooled": 0.9, "object_hausdorff_pooled": 60.0},
            {"setting": {"h": 3}, "object_f1_pooled": None, "object_hausdorff_pooled": None}]
    assert sweep.best(rows, "object_f1_pooled")["setting"] == {"h": 2}
    assert sweep.best(rows, "object_hausdorff_pooled")["setting"] == {"h": 1}


def test_grid_varies_the_last_key_fastest_and_keeps_the_rest():
    base = {"threshold": None, "min_size": 30, "h": 2.0}
    assert sweep.grid(base, {"threshold": [0.3, 0.4], "min_size": [], "h": [1.0, 2.0]}) == [
        {"threshold": 0.3, "min_size": 30, "h": 1.0}, {"threshold": 0.3, "min_size": 30, "h": 2.0},
        {"threshold": 0.4, "min_size": 30, "h": 1.0}, {"threshold": 0.4, "min_size": 30, "h": 2.0}]


def test_images_outside_the_validation_split_are_refused(tmp_path, monkeypatch):
    cfg, held_out = finished_run(tmp_path)
    cfg["datasets"]["val"]["stems"] = sorted(set(STEMS) - set(held_out))[:1] + held_out  # one training image
    monkeypatch.chdir(tmp_path)
    config = sweep.merged_config([_write(tmp_path / "c.yaml", cfg)])
    with pytest.raises(InputError, match=r"dataset 'val': 1 of its 2 images \(a\) are not validation images"):
        sweep.run(config, "val", "m", {"threshold": [0.5]})
    cfg["datasets"]["val"]["images"] = cfg["datasets"]["tr"]["images"] = "imgs"
    cfg["datasets"]["val"].pop("stems")  # a test split of other images is refused the same way
    cfg["datasets"]["tr"]["stems"] = held_out
    config = sweep.merged_config([_write(tmp_path / "c.yaml", cfg)])
    with pytest.raises(InputError, match="are not validation images"):
        sweep.run(config, "val", "m", {"threshold": [0.5]})


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_glas_rank_sums_the_three_object_figures_ranks():
    figures = [(0.88, 0.85, 94.0), (0.87, 0.87, 82.0), (0.86, 0.87, 75.0)]
    rows = [{"setting": {"t": i + 1}, "object_f1_pooled": f1, "object_dice_pooled": dice,
             "object_hausdorff_pooled": hd} for i, (f1, dice, hd) in enumerate(figures)]
    # F1 ranks 1, 2, 3; Dice 3, 1, 1 (equals share the better rank); Hausdorff 3, 2, 1
    assert sweep.glas_rank(rows) == [7, 5, 5]
    assert sweep.best(rows, "glas_rank")["setting"] == {"t": 2}  # 5 and 5: the higher object F1
    assert sweep.best(rows, "object_f1_pooled")["setting"] == {"t": 1}


def _aji_row(name: str, per_image: dict[str, float]) -> dict:
    threshold = None if str(name).startswith("spec") else name  # the value the sweep ran; the model's own is null
    return {"setting": {"threshold": name}, "postprocess": {"threshold": threshold},
            "aji_mean": sum(per_image.values()) / len(per_image),
            "per_image": {"aji": per_image, "pq": per_image, "pixel_f1": per_image}}


def test_min_wins_keeps_the_own_setting_unless_a_majority_of_images_agree():
    own = _aji_row("spec (0.4)", {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5})
    lucky = _aji_row(0.6, {"a": 0.9, "b": 0.4, "c": 0.4, "d": 0.5})  # mean 0.55, higher on 1 image of 4
    steady = _aji_row(0.5, {"a": 0.55, "b": 0.55, "c": 0.55, "d": 0.45})  # mean 0.525, higher on 3 of 4
    rows = [own, lucky, steady]
    assert sweep.best(rows, "aji_mean") is lucky
    sweep.record_wins(rows, own, "aji_mean")
    assert [r["wins_over_own"] for r in rows] == [0, 1, 3]
    assert sweep.best_robust(rows, "aji_mean", own, 0.5) is steady  # 3 > 0.5 * 4; lucky's 1 is not
    assert sweep.best_robust(rows, "aji_mean", own, 0.75) is own  # 3 is not more than 0.75 * 4
    assert sweep.own_row(rows, {"threshold": None, "min_size": 8}) is own
    with pytest.raises(InputError, match="the grid does not include it"):
        sweep.own_row(rows, {"threshold": 0.45})


def test_min_wins_through_the_command_records_each_settings_wins(tmp_path, monkeypatch):
    cfg, held_out = finished_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep.json"
    # the config's own threshold is the spec's (null); 0.8 finds nothing, so it wins on no image
    sweep.main(["--configfile", str(_write(tmp_path / "c.yaml", cfg)), "--dataset", "val", "--model", "m",
                "--threshold", "0.8", "spec", "--select", "aji_mean", "--min-wins", "0.5", "--out", str(out)])
    result = sweep.read_json(out)
    assert result["own"] == result["chosen"] == {"threshold": "spec (0.5)"}
    assert [r["wins_over_own"] for r in result["rows"]] == [0, 0]
    assert [r["postprocess"] for r in result["rows"]] == [{"threshold": 0.8}, {"threshold": None}]  # as run
    assert set(result["rows"][0]["per_image"]["aji"]) == set(held_out)
    with pytest.raises(SystemExit):  # a pooled figure cannot be compared image by image
        sweep.main(["--configfile", str(tmp_path / "c.yaml"), "--dataset", "val", "--model", "m",
                    "--threshold", "spec", "--min-wins", "0.5"])
