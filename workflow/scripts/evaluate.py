import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.evaluate import run_evaluate  # noqa: E402

run_logged(snakemake, lambda: run_evaluate(
    snakemake.input.instances, snakemake.params.dataset, snakemake.output.table, snakemake.output.summary,
    snakemake.input.predictions, classes=snakemake.params.classes,
))
