import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.wsi import run_slide_tissue  # noqa: E402

run_logged(snakemake, lambda: run_slide_tissue(
    snakemake.input.slide, snakemake.config["slides"], (snakemake.input.stain or [None])[0],
    snakemake.output.info, snakemake.output.mask, snakemake.output.thumbnail,
))
