import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from histoflow.pipeline import run_extract_patches  # noqa: E402
from histoflow.pipeline_volume import stack_as_dataset  # noqa: E402
from histoflow.smk import run_logged  # noqa: E402


def main():
    dataset, folder = stack_as_dataset(snakemake.params.dirs["train"])
    p = snakemake.params.patches
    patches = {"size": p["size"], "mode": "random", "per_image": p["per_image"], "overlap": 0,
               "val_fraction": p["val_fraction"], "boundary_width": 1, "weight_w0": 0.0, "weight_sigma": 5.0,
               "distance_w0": 1.0, "distance_sigma": 3.0}
    run_extract_patches({"stack": dataset}, {"stack": folder}, patches, snakemake.params.seed,
                        snakemake.output.store, snakemake.output.split)


run_logged(snakemake, main)
