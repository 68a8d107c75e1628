import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_search_graphcut  # noqa: E402

run_logged(snakemake, lambda: run_search_graphcut(
    snakemake.input.train, snakemake.input.features, snakemake.params.grid, snakemake.output[0]
))
