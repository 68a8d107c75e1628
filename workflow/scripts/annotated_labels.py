import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.data import run_annotated_labels  # noqa: E402

p = snakemake.params
run_logged(snakemake, lambda: run_annotated_labels(snakemake.input.annotations, p.windows, p.classes, p.regions,
                                                   p.downsample, p.level0, p.multiclass, snakemake.output[0]))
