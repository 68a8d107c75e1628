import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.data import run_annotated_images  # noqa: E402

p = snakemake.params
run_logged(snakemake, lambda: run_annotated_images(snakemake.input.slide, p.windows, p.mpp, p.base_mpp,
                                                   snakemake.output[0]))
