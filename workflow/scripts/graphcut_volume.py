import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_graphcut_volume  # noqa: E402

run_logged(snakemake, lambda: run_graphcut_volume(
    snakemake.input.refined, snakemake.params.dirs["target"], snakemake.input.scribbles, snakemake.input.params,
    snakemake.params.spacing, snakemake.params.banded, snakemake.output.mask, snakemake.output.summary,
    snakemake.output.views,
))
