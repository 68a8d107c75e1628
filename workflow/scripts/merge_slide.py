import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.wsi import run_merge_slide  # noqa: E402

run_logged(snakemake, lambda: run_merge_slide(list(snakemake.input), snakemake.output[0]))
