"""The bad-input suite: each fault a new user makes, one at a time, through the real workflow on a tiny dataset.

Faults visible in the config or the file headers stop ``snakemake`` before any job, with a message that
names the file or key and says what to do, and leave nothing behind that a rerun could take as finished;
after the fix the same folder plans the whole run. Faults only the pixels show (a 12-bit camera in
uint16, a binary mask under ``mask_type: instance``) run with a warning naming the file and what was done.
Single-rule faults with their own tests: disk full (tests/unit/test_patches.py), undecodable and
truncated slides (tests/unit/test_wsi.py), test masks outside training
(tests/workflow/test_test_masks.py), names (tests/workflow/test_names.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_workflow import planned_jobs, smk, write_config

from histoflow.io import read_image, write_image
from histoflow.synthetic.fibres import FibreParams, make_fibre_image

SIZE = (96, 96)


def _pair(workdir: Path, folder: str, stem: str, seed: int) -> None:
    img, lab = make_fibre_image(seed, FibreParams(size=SIZE, fibre_diameter=24.0))
    write_image(workdir / folder / "images" / f"{stem}.png", img)
    write_image(workdir / folder / "masks" / f"{stem}.png", lab.astype(np.uint16))


def config() -> dict:
    return {
        "device": "cpu",
        "datasets": {"mine": {"images": "train/images", "masks": "train/masks", "split": "train"},
                     "mine_test": {"images": "test/images", "masks": "test/masks", "split": "test"}},
        "stain": {"method": "none"},
        "patches": {"size": 64, "per_image": 2, "val_fraction": 0.34},
        "models": {"a": {"arch": "unet", "params": {"base_width": 4, "depth": 2},
                         "train": {"epochs": 1, "batch_size": 2}, "predict": {"tile": 64, "overlap": 16}}},
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for stem, seed in (("a", 0), ("b", 1), ("c", 2)):
        _pair(tmp_path, "train", stem, seed)
    _pair(tmp_path, "test", "t", 3)
    write_config(tmp_path, config())
    return tmp_path


def _set(workdir: Path, edit: Callable[[dict], None]) -> None:
    cfg = config()
    edit(cfg)
    write_config(workdir, cfg)


# fault id -> (make the fault, fix it, what the message must hold: the file or key, and the fix)
PARSE_TIME: dict[str, tuple[Callable[[Path], None], Callable[[Path], None], list[str]]] = {
    "test mask of the wrong size": (
        lambda w: write_image(w / "test/masks/t.png", np.zeros((40, 40), np.uint16)),
        lambda w: _pair(w, "test", "t", 3),
        ["test/masks/t.png", "40 x 40", "masks must have their image's size"],
    ),
    "unknown architecture": (
        lambda w: _set(w, lambda c: c["models"]["a"].update(arch="unett")),
        lambda w: write_config(w, config()),
        ["models.a.arch", "'unett'", "choose from"],
    ),
    "misspelled parameter": (
        lambda w: _set(w, lambda c: c["models"]["a"]["params"].update(base_widht=4)),
        lambda w: write_config(w, config()),
        ["models.a.params.base_widht", "its parameters are", "base_width"],
    ),
    "zero-byte training image": (
        lambda w: (w / "train/images/b.png").write_bytes(b""),
        lambda w: _pair(w, "train", "b", 1),
        ["train/images/b.png", "empty (0 bytes)"],
    ),
    "training image without a mask": (
        lambda w: (w / "train/masks/c.png").unlink(),
        lambda w: _pair(w, "train", "c", 2),
        ["train/images/c.png", "no mask"],
    ),
    "name that cannot be a folder": (
        lambda w: _set(w, lambda c: c["models"].update({"my model": c["models"].pop("a")})),
        lambda w: write_config(w, config()),
        ["models.my model", "letters, digits and . _ - + ( ) only"],
    ),
}


@pytest.mark.parametrize("fault", sorted(PARSE_TIME))
def test_a_fault_stops_the_run_before_any_job_and_the_fixed_folder_runs(workdir, fault):
    make, fix, expected = PARSE_TIME[fault]
    make(workdir)
    proc = smk(workdir, check=False)  # a real run, as the user starts it
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in expected:
        assert text in out, (text, out[-3000:])
    assert not (workdir / "results").exists()  # no job ran: nothing a rerun could take as finished
    fix(workdir)
    jobs = planned_jobs(smk(workdir, "-n").stdout)
    assert {"train_model[model=a]", "evaluate[model=a, dataset=mine_test]"} <= jobs


@pytest.mark.slow
def test_12_bit_images_run_scaled_from_their_own_range_with_a_warning(workdir):
    for stem in ("a", "b", "c"):  # a 12-bit camera's values in uint16 files: 0 .. 4095
        path = workdir / "train/images" / f"{stem}.png"
        write_image(path.with_suffix(".tif"), read_image(path).astype(np.uint16) * 16)
        path.unlink()
    smk(workdir, "results/normalized/mine")
    assert json.loads((workdir / "results/normalized/mine/bit_depth.json").read_text())["bit_depth"] == 12
    assert "read as 12-bit data" in (workdir / "results/logs/normalize_stain/mine.log").read_text()


@pytest.mark.slow
def test_binary_masks_under_instance_labels_are_split_with_a_warning(workdir):
    for stem in ("a", "b", "c"):  # 0/255 exports of the instance masks
        path = workdir / "train/masks" / f"{stem}.png"
        write_image(path, np.where(read_image(path) > 0, 255, 0).astype(np.uint8))
    smk(workdir, "results/patches/patches.h5")
    log = (workdir / "results/logs/extract_patches.log").read_text()
    assert "train/masks/a.png" in log and "a binary mask" in log and "Set mask_type: binary" in log


@pytest.mark.slow
def test_outputs_get_the_modes_the_users_umask_gives(workdir):
    """Atomically written outputs (a temporary file, then a rename) are 0644 / 0755 under umask 022, as
    ``open(path, "w")`` and ``mkdir`` make them, not the 0600 of a temporary file: colleagues can read them."""
    import os
    import stat

    old = os.umask(0o022)  # the Snakemake subprocess and its jobs inherit it
    try:
        smk(workdir, "results/normalized/mine_test")
    finally:
        os.umask(old)
    made = [p for p in (workdir / "results").rglob("*") if ".snakemake" not in p.parts]
    files = [p for p in made if p.is_file()]
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".json" for p in files)
    for p in made:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    import os
    import stat

    from histoflow.io import atomic_dir, write_json

    old = os.umask(0o027)  # a facility's group-readable, world-closed setting
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "store.zarr") as tmp:
            (tmp / "x").write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "store.zarr").stat().st_mode) == 0o750
