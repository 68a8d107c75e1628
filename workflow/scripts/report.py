import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.smk import run_logged  # noqa: E402
from histoflow.stages.report import build_report  # noqa: E402

run_logged(snakemake, lambda: build_report(
    config=snakemake.config,
    models=snakemake.params.models,
    trained=snakemake.params.trained,
    volumes=snakemake.params.volumes,
    classes=snakemake.params.classes,
    references=snakemake.params.references,
    per_fibre=snakemake.params.per_fibre,
    datasets=snakemake.params.datasets,
    results=snakemake.config["results"],  # the directory every input below lies in (config.yaml results:)
    options=snakemake.params.report,
    out_html=snakemake.output.html,
    out_figures=snakemake.output.overlays,
))
