import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.wsi import run_slide_outputs  # noqa: E402

run_logged(snakemake, lambda: run_slide_outputs(
    snakemake.input.prob, snakemake.input.spec, snakemake.params.postprocess, snakemake.config["slides"],
    snakemake.params.classification,
    dict(snakemake.output.items()),
))
