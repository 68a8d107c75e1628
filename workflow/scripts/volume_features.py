import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.volumes import run_volume_features  # noqa: E402

run_logged(snakemake, lambda: run_volume_features(
    Path(snakemake.input.model).parent, snakemake.params.dirs, snakemake.params.predict,
    snakemake.params.train_every, snakemake.config["device"], snakemake.output[0],
))
