import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.evaluate import run_export_objects  # noqa: E402

run_logged(snakemake, lambda: run_export_objects(
    snakemake.input.instances, snakemake.input.normalized, snakemake.params.pixel_size_um,
    snakemake.params.classification, snakemake.output[0],
))
