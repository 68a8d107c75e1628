import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import ablation_methods, run_evaluate_volume  # noqa: E402

run_logged(snakemake, lambda: run_evaluate_volume(
    snakemake.params.dirs["target"],
    ablation_methods(snakemake.params.vmodels, snakemake.input.predictions, snakemake.input.specs,
                     snakemake.params.features_from, snakemake.input.refined, snakemake.input.mask),
    snakemake.output[0],
))
