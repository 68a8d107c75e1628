import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.patches import run_volume_patches  # noqa: E402

run_logged(snakemake, lambda: run_volume_patches(
    snakemake.params.dirs["train"], snakemake.params.patches, snakemake.params.seed,
    snakemake.output.store, snakemake.output.split,
))
