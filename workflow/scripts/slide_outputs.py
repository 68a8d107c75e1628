import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.wsi import run_slide_outputs  # noqa: E402
from histoflow.wsi import store_of  # noqa: E402

run_logged(snakemake, lambda: run_slide_outputs(
    store_of(snakemake.input.prob), snakemake.input.spec, snakemake.params.postprocess, snakemake.config["slides"],
    snakemake.params.classification,
    {k: store_of(v) if k == "labels_zarr" else v for k, v in snakemake.output.items()},
))
