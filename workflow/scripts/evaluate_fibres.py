import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.evaluate import run_evaluate_fibres  # noqa: E402

run_logged(snakemake, lambda: run_evaluate_fibres(
    snakemake.input.predictions, snakemake.input.spec, snakemake.params.postprocess, snakemake.params.dataset,
    snakemake.params.thresholds, snakemake.output.table, snakemake.output.summary, snakemake.input.normalized,
    snakemake.params.fibres_from,
))
