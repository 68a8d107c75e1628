import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.predict import run_ensemble_predict, run_ensemble_vote  # noqa: E402

if snakemake.params.combine == "vote":
    run_logged(snakemake, lambda: run_ensemble_vote(
        snakemake.input.instances, snakemake.params.weights, snakemake.params.vote_fraction, snakemake.output[0]
    ))
else:
    run_logged(snakemake, lambda: run_ensemble_predict(
        snakemake.input.predictions, snakemake.params.weights, snakemake.output[0]
    ))
