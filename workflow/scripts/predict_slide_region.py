import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.wsi import run_predict_slide_region  # noqa: E402

slides = snakemake.config["slides"]  # batch_size, workers, compile: speed only, so not in params
run_logged(snakemake, lambda: run_predict_slide_region(
    snakemake.input.slide, snakemake.input.tissue, Path(snakemake.input.model).parent,
    (snakemake.input.stain or [None])[0], slides, snakemake.params.predict, int(snakemake.wildcards.region),
    snakemake.config["device"], {k: slides[k] for k in ("batch_size", "workers", "compile")}, snakemake.output[0],
))
