import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_search_graphcut, run_search_graphcut_validation  # noqa: E402

i, p = snakemake.input, snakemake.params
if p.grid["search"] == "training_slices":
    run_logged(snakemake, lambda: run_search_graphcut(i.train, i.features, p.grid, snakemake.output[0]))
else:
    run_logged(snakemake, lambda: run_search_graphcut_validation(i.refined, p.dirs["val"], i.scribbles, p.grid,
                                                                 p.spacing, snakemake.output[0]))
