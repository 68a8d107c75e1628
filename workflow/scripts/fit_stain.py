import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.stain import run_fit_stain  # noqa: E402

run_logged(snakemake, lambda: run_fit_stain(
    snakemake.params.image, snakemake.params.method, snakemake.params.kwargs, snakemake.output[0]
))
