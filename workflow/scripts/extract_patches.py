import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.patches import run_extract_patches  # noqa: E402

datasets = snakemake.params.datasets
normalized = dict(zip(datasets, snakemake.input.normalized, strict=True))
run_logged(snakemake, lambda: run_extract_patches(
    datasets, normalized, snakemake.params.patches, snakemake.params.seed,
    snakemake.output.store, snakemake.output.split, classes=snakemake.params.classes,
))
