"""The volume stage through Snakemake: a tiny synthetic stack, Vahadane-normalized as the M-Unet paper does, user
scribbles, graph-cut parameters chosen in 3-D with seeds on a validation stack, the ablation table, and that editing
the scribbles reruns only DDML → graph cut → evaluation (and the report) while changing the stain normalization
reruns everything that reads the stacks' pixels."""

from __future__ import annotations

import pytest
import yaml
from test_workflow import TINY, planned_jobs, smk, write_config

from histoflow.scribbles import make_scribbles, read_scribbles
from histoflow.synthetic.organs import make_organ_stack
from histoflow.volume import write_tiff_stack

VOLUME = {"generator": "organ_stack", "n_slices": 12, "size": 96, "seed": 3, "scribbles": "my_scribbles.tif",
          "spacing_um": [4.0, 1.0, 1.0], "stain": "vahadane"}


def volume_config() -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(TINY, sort_keys=False))
    cfg.pop("ensembles")
    cfg["models"].pop("b")
    cfg["models"].pop("f")  # one image model is enough for the report; the volume stage is what is tested
    cfg["volumes"] = {"organ": VOLUME}
    cfg["volume_patches"] = {"size": 64, "per_image": 4}
    small = {"train": {"epochs": 1, "batch_size": 8}, "predict": {"tile": 32, "overlap": 8}}
    cfg["volume_models"] = {
        "unet": {"arch": "unet", "params": {"base_width": 4, "depth": 2}, **small},
        "munet": {"arch": "munet", "params": {"base_width": 4, "depth": 2, "feature_dim": 8}, **small},
    }
    cfg["ddml"] = {"steps": 30, "train_pixels": 2000, "train_every": 4, "dims": [8, 4]}
    cfg["graphcut"] = {"gamma": [0.0, 1.0], "sigma": [0.1], "delta": [0.0]}
    return cfg


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("volume")
    # The person's scribbles, drawn on the target stack (the generator is deterministic).
    _, labels = make_organ_stack(VOLUME["seed"], (VOLUME["n_slices"], VOLUME["size"], VOLUME["size"]))
    write_tiff_stack(workdir / "my_scribbles.tif", make_scribbles(labels, every=4, seed=0))
    write_config(workdir, volume_config())
    smk(workdir, "results/volumes/organ/ablation.tsv", "results/report.html")
    return workdir


@pytest.mark.slow
def test_volume_stage_produces_the_ablation_table(volume_run):
    r = volume_run / "results" / "volumes" / "organ"
    rows = (r / "ablation.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["method", "precision", "recall", "f1", "iou"]
    assert [row.split("\t")[0] for row in rows[1:]] == [
        "U-Net", "M-Unet", "M-Unet + DDML", "M-Unet + DDML + graph cut"]
    assert (r / "segmentation" / "views.png").read_bytes()[:4] == b"\x89PNG"
    html = (volume_run / "results" / "report.html").read_text()
    assert "scribbles, metric learning and graph cut" in html and "M-Unet + DDML + graph cut" in html


@pytest.mark.slow
def test_graph_cut_parameters_are_chosen_in_3d_on_the_validation_stack(volume_run):
    import json

    import tifffile

    r = volume_run / "results" / "volumes" / "organ"
    params = json.loads((r / "graphcut_params.json").read_text())
    assert params["protocol"] == "validation stack, 3-D, scribbles as seeds"
    assert len(params["table"]) == 2 and params["best"]["gamma"] in (0.0, 1.0)  # the config's grid
    h = tifffile.imread(r / "validation" / "refined.tif")
    assert h.shape == (VOLUME["n_slices"], VOLUME["size"], VOLUME["size"])
    assert len(list((r / "data" / "val" / "labels").glob("*.png"))) == VOLUME["n_slices"]


@pytest.mark.slow
def test_graph_cut_respects_the_scribbles(volume_run):
    import tifffile

    mask = tifffile.imread(volume_run / "results" / "volumes" / "organ" / "segmentation" / "mask.tif")
    seeds = read_scribbles(volume_run / "my_scribbles.tif", mask.shape)
    assert (mask[seeds == 1] == 1).all() and (mask[seeds == 2] == 0).all()


@pytest.mark.slow
def test_editing_scribbles_reruns_only_ddml_graphcut_evaluation(volume_run):
    path = volume_run / "my_scribbles.tif"
    original = path.read_bytes()
    seeds = read_scribbles(path, (VOLUME["n_slices"], VOLUME["size"], VOLUME["size"]))
    seeds[1, 2:4, 2:10] = 2  # one more background stroke, on a slice that had none
    write_tiff_stack(path, seeds)
    try:
        jobs = planned_jobs(smk(volume_run, "-n", "results/volumes/organ/ablation.tsv", "results/report.html").stdout)
    finally:
        path.write_bytes(original)
    # the graph-cut parameters are chosen on the validation stack with its own scribbles: they stay
    assert jobs == {"ddml[volume=organ]", "graphcut_volume[volume=organ]", "evaluate_volume[volume=organ]", "report"}


@pytest.mark.slow
def test_changing_the_stain_normalization_reruns_what_reads_the_pixels(volume_run):
    assert (volume_run / "results/volumes/organ/normalized/target/slice_000.png").exists()
    cfg = volume_config()
    cfg["volumes"]["organ"]["stain"] = "macenko"
    original = (volume_run / "config.yaml").read_text()
    write_config(volume_run, cfg)
    try:
        jobs = planned_jobs(smk(volume_run, "-n", "results/volumes/organ/ablation.tsv", "results/report.html").stdout)
    finally:
        (volume_run / "config.yaml").write_text(original)
    assert {"normalize_volume[volume=organ]", "volume_patches[volume=organ]", "volume_features[volume=organ]",
            "train_volume_model[volume=organ, vmodel=munet]", "graphcut_volume[volume=organ]"} <= jobs
    assert not any(j.startswith("volume_data") for j in jobs)  # the generated stacks stay
