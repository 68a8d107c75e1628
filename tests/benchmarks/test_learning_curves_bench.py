"""benchmarks/learning_curves.py on fabricated finished trainings: the curve is the cumulative epoch time against
the validation Dice, the validation dataset's object figures are added when evaluated, and the table and figure
are written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_curves", REPO / "benchmarks" / "learning_curves.py")
curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curves)


def _training(results: Path, model: str, seconds: list[float], dice: list[float], summary: dict | None = None):
    folder = results / "models" / model
    folder.mkdir(parents=True)
    rows = ["epoch\ttrain_loss\tval_dice\tseconds"] + [
        f"{i + 1}\t0.5\t{d}\t{s}" for i, (s, d) in enumerate(zip(seconds, dice, strict=True))]
    (folder / "history.tsv").write_text("\n".join(rows) + "\n")
    (folder / "spec.json").write_text(json.dumps({"train_seconds": sum(seconds) + 5, "device": "cpu",
                                                  "device_name": "AMD EPYC (2 cores)", "threads": 2,
                                                  "precision": "fp32", "scale": 0.5}))
    if summary is not None:
        (results / "metrics" / model).mkdir(parents=True)
        (results / "metrics" / model / "glas_val_summary.json").write_text(json.dumps(summary))


def test_curves_table_and_files(tmp_path, capsys):
    _training(tmp_path / "a", "unet", [60, 60, 120], [0.5, 0.7, 0.8],
              {"object_f1_pooled": 0.81234, "object_hausdorff_pooled": 60.0, "n_images": 17})
    _training(tmp_path / "b", "unet", [30, 30], [0.6, 0.65])  # its validation dataset not evaluated
    out = curves.main(["--name", "t", "--val-dataset", "glas_val", "--out", str(tmp_path / "o"),
                       "--run", f"first={tmp_path / 'a'}:unet", "--run", f"second={tmp_path / 'b'}:unet"])
    a, b = out["runs"]
    assert a["minutes"] == [1.0, 2.0, 4.0] and a["val_dice"] == [0.5, 0.7, 0.8]  # cumulative: 60, 120, 240 s
    assert a["train_minutes"] == round(245 / 60, 2) and a["scale"] == 0.5 and a["device"] == "AMD EPYC (2 cores)"
    assert a["validation"] == {"object_f1_pooled": 0.8123, "object_hausdorff_pooled": 60.0}
    assert "validation" not in b and b["minutes"] == [0.5, 1.0]
    assert (tmp_path / "o" / "t_curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "o" / "t_curves.json").read_text())["runs"][1]["label"] == "second"
    printed = capsys.readouterr().out
    assert "| first | 4.1 | 0.8000 | 0.8123 | 60.0000 |" in printed and "| second | 1.1 | 0.6500 | – | – |" in printed


def test_bad_run_argument_is_explained():
    with pytest.raises(Exception, match="LABEL=RESULTS_FOLDER:MODEL"):
        curves.parse_run("no-separator")


def test_kept_runs_come_from_the_earlier_file_as_recorded(tmp_path):
    _training(tmp_path / "a", "unet", [60, 60], [0.5, 0.7])
    _training(tmp_path / "b", "unet", [30], [0.6])
    out = tmp_path / "o"
    curves.main(["--name", "t", "--out", str(out), "--run", f"old={tmp_path / 'a'}:unet"])
    (tmp_path / "a" / "models" / "unet" / "history.tsv").unlink()  # its results folder is gone
    again = curves.main(["--name", "t", "--out", str(out), "--keep", "old", "--run", f"new={tmp_path / 'b'}:unet"])
    old, new = again["runs"]
    assert old["label"] == "old" and old["minutes"] == [1.0, 2.0] and old["val_dice"] == [0.5, 0.7]
    assert new["label"] == "new" and new["val_dice"] == [0.6]
    renamed = curves.main(["--name", "t", "--out", str(out), "--keep", "new=newer", "--keep", "old"])["runs"]
    assert [r["label"] for r in renamed] == ["newer", "old"] and renamed[0]["val_dice"] == [0.6]
    with pytest.raises(SystemExit, match=r"no run labelled \['gone'\]; its runs: \['newer', 'old'\]"):
        curves.main(["--name", "t", "--out", str(out), "--keep", "gone"])
