import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_auto_scribbles  # noqa: E402

run_logged(snakemake, lambda: run_auto_scribbles(snakemake.params.dirs["val"], snakemake.params.every,
                                                 snakemake.params.seed, snakemake.output[0]))
