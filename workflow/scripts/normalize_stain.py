import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.stain import run_normalize  # noqa: E402

run_logged(snakemake, lambda: run_normalize(snakemake.params.images, snakemake.input.stain, snakemake.output[0],
                                            snakemake.params.bit_depth))
