import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.postprocess import run_postprocess  # noqa: E402

run_logged(snakemake, lambda: run_postprocess(
    snakemake.input.predictions, snakemake.input.spec, snakemake.params.postprocess, snakemake.output[0],
    snakemake.input.normalized,
))
