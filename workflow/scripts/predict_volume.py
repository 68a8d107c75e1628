import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_predict_volume  # noqa: E402

run_logged(snakemake, lambda: run_predict_volume(
    Path(snakemake.input.model).parent, snakemake.params.dirs["target"], snakemake.params.predict,
    snakemake.config["device"], snakemake.output[0],
))
