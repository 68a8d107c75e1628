"""Seed configs that need no public data (the synthetic generators) validate and dry-run as a user runs them; the
ones on ../shared/datasets are in test_public_configs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflow import planned_jobs, smk

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["vgg16_muscle.yaml"])
def test_seed_config_dry_runs(name, tmp_path):
    out = smk(tmp_path, "--configfile", str(REPO / "config" / "seeds" / name), "--replace-workflow-config", "-n").stdout
    jobs = planned_jobs(out)
    assert "pretrain_model[model=vgg16_mdn]" in jobs and "train_model[model=unet]" in jobs
    assert "evaluate_fibres[model=vgg16_mdn, dataset=fibres]" in jobs


def test_mdunet_seed_config_dry_runs_the_volume_stage(tmp_path):
    """The M-Unet paper's config: Vahadane first, parameters searched on the validation stack, the ablation table."""
    target = "results_seed_mdunet/volumes/organ/ablation.tsv"
    out = smk(tmp_path, "--configfile", str(REPO / "config" / "seeds" / "mdunet_graphcut.yaml"),
              "--replace-workflow-config", "-n", target).stdout
    jobs = planned_jobs(out)
    assert {"normalize_volume[volume=organ]", "validation_scribbles[volume=organ]", "ddml_validation[volume=organ]",
            "search_graphcut[volume=organ]", "train_volume_model[volume=organ, vmodel=munet]",
            "evaluate_volume[volume=organ]"} <= jobs
    assert not [j for j in jobs if j.startswith(("train_model", "extract_patches"))], jobs  # no 2-D demo
