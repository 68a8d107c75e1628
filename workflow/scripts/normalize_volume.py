import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_normalize_volume  # noqa: E402

run_logged(snakemake, lambda: run_normalize_volume(snakemake.params.dirs, snakemake.output[0], snakemake.params.method))
