import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.train import run_train  # noqa: E402

run_logged(snakemake, lambda: run_train(
    snakemake.input.store, snakemake.params.model, snakemake.params.seed, snakemake.config["device"],
    Path(snakemake.output.model).parent, init_from=snakemake.input.get("stage1"),
    stage=snakemake.params.get("stage", "train"),
))
