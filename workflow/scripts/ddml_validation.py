import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_ddml  # noqa: E402

run_logged(snakemake, lambda: run_ddml(
    snakemake.input.features, snakemake.input.scribbles, snakemake.params.ddml, snakemake.params.seed,
    snakemake.output[0], part="val",
))
