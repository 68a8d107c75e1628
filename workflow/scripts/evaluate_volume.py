import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.io import read_json  # noqa: E402
from histoflow.pipeline_volume import run_evaluate_volume  # noqa: E402
from histoflow.smk import run_logged  # noqa: E402


def main():
    names = {"unet": "U-Net", "munet": "M-Unet"}
    methods = {}
    rows = zip(snakemake.params.vmodels, snakemake.input.predictions, snakemake.input.specs, strict=True)
    for m, pred, spec in sorted(rows, key=lambda r: r[0] != "unet"):  # the plain U-Net baseline first
        methods[names.get(m, m)] = (pred, read_json(spec)["threshold"])
    ddml = names.get(snakemake.params.features_from, snakemake.params.features_from)
    methods[f"{ddml} + DDML"] = (snakemake.input.refined, 0.5)
    methods[f"{ddml} + DDML + graph cut"] = (snakemake.input.mask, 0.5)
    run_evaluate_volume(snakemake.params.dirs["target"], methods, snakemake.output[0])


run_logged(snakemake, main)
