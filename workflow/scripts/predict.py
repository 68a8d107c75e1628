import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.predict import run_predict  # noqa: E402

run_logged(snakemake, lambda: run_predict(
    Path(snakemake.input.model).parent, snakemake.input.normalized, snakemake.params.stems,
    snakemake.params.predict, snakemake.config["device"], snakemake.output[0],
))
