import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.predict import run_ensemble_spec  # noqa: E402

run_logged(snakemake, lambda: run_ensemble_spec(
    list(snakemake.input), snakemake.params.members, snakemake.params.weights, snakemake.output[0],
    snakemake.params.combine, snakemake.params.vote_fraction,
))
