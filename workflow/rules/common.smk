# Configuration, datasets, and the input functions the rules use. No rules here.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from histoflow.config import validate_config  # noqa: E402
from histoflow.config import check_architectures, check_ensembles, check_models, check_names  # noqa: E402
from histoflow.config import check_volumes  # noqa: E402
from histoflow.datasets import SlideDataset, check_sizes, resolve_datasets  # noqa: E402
from histoflow.smk import one_of  # noqa: E402

_full = validate_config(config)
config.clear()
config.update(_full)
check_names(config)
check_architectures(config)

RESULTS = config["results"]
DATASETS = resolve_datasets(config)
check_sizes(DATASETS)  # every image and mask, test images included, before any job
MODELS = list(config["models"])
PRETRAINED = [m for m in MODELS if config["models"][m].get("pretrain")]  # two-stage training
ENSEMBLES = check_ensembles(config)
check_models(config)
PREDICTORS = MODELS + ENSEMBLES  # everything that is predicted, post-processed and evaluated
VOLUMES = list(config["volumes"])
check_volumes(config)
VOLUME_MODELS = list(config["volume_models"]) if VOLUMES else []
TEST_DATASETS = [name for name, d in DATASETS.items() if d.test]
GENERATED = [name for name in DATASETS if config["datasets"][name].get("generator")]
ANNOTATED = {name: d for name, d in DATASETS.items() if isinstance(d, SlideDataset)}  # slides annotated in QuPath
ANNOTATED_SLIDES = sorted({s for d in ANNOTATED.values() for s in d.slides})
TRAIN_DATASETS = [name for name, d in DATASETS.items() if d.train]
ENV = "../../envs/histoflow.yaml"


wildcard_constraints:
    dataset=one_of(list(DATASETS)),
    model=one_of(PREDICTORS),
    volume=one_of(VOLUMES),
    vmodel=one_of(VOLUME_MODELS),


def raw_inputs(name, stems=None, masks=True):
    """The files (or, for a generated dataset, the folder) a dataset's images (and masks) come from.

    ``stems``: only those images (default: all). A rule depends on the masks it reads and no others, so that
    editing a test image's mask reruns its evaluation, never the stain normalization or the training.
    """
    if config["datasets"][name].get("generator"):
        return [f"{RESULTS}/data/{name}"]
    d = DATASETS[name]
    if name in ANNOTATED:  # per slide, a folder of its windows' images and one of their labels, each from one job
        slides = d.slide_of(d.stems if stems is None else stems)
        return [f"{RESULTS}/data/{name}/images/{s}" for s in slides] + (
            [f"{RESULTS}/data/{name}/labels/{s}" for s in slides] if masks else [])
    stems = d.stems if stems is None else stems
    return [d.images[s] for s in stems] + ([d.masks[s] for s in stems] if masks else [])


def raw_dataset_images(wildcards):
    """Every image of the dataset (stain normalization reads no mask)."""
    return raw_inputs(wildcards.dataset, masks=False)


def raw_test_inputs(wildcards):
    """The dataset's test images and their masks (evaluation)."""
    return raw_inputs(wildcards.dataset, DATASETS[wildcards.dataset].test)


def stain_target_image():
    """Explicit target from config, else the first training image of the first training dataset."""
    if config["stain"]["target"]:
        return config["stain"]["target"]
    d = DATASETS[TRAIN_DATASETS[0]]
    return d.images[d.train[0]]


def stain_target_inputs(wildcards):
    """The target image file, or the generated dataset folder that will contain it."""
    target = stain_target_image()
    made = [f for n in [*GENERATED, *ANNOTATED] for f in raw_inputs(n, masks=False)]  # folders a rule writes
    return [f for f in made if target.startswith(f"{f}/")] or [target]


def patch_inputs(wildcards):
    return {
        "normalized": [f"{RESULTS}/normalized/{n}" for n in TRAIN_DATASETS],
        "raw": [p for n in TRAIN_DATASETS for p in raw_inputs(n, DATASETS[n].train)],
    }


def dataset_table(names):
    """JSON-friendly description of datasets for the scripts (paths per stem, split, mask type)."""
    return {
        n: {
            "images": DATASETS[n].images,
            "masks": DATASETS[n].masks,
            "mask_type": DATASETS[n].mask_type,
            "train": DATASETS[n].train,
            "test": DATASETS[n].test,
            "pixel_size_um": DATASETS[n].pixel_size_um,
            "class_values": DATASETS[n].class_values,
            "palette": DATASETS[n].palette,
            "valid": DATASETS[n].valid,
        }
        for n in names
    }


def annotated_windows(wildcards):
    """A slide's windows as JSON (stem, region, y, x, h, w at the dataset's mpp)."""
    return [vars(w) for w in ANNOTATED[wildcards.dataset].windows[wildcards.slide]]


def _weights_input(model):
    """A model's local initial-weights file, as an input of its first training stage: a missing file stops the
    run before any job, and a replaced file retrains."""
    weights = config["models"][model].get("weights")
    return {"weights": weights} if weights else {}


def pretrain_inputs(wildcards):
    """The patch store and the model's initial weights (stage 1 of a two-stage model)."""
    return {"store": f"{RESULTS}/patches/patches.h5", **_weights_input(wildcards.model)}


def train_inputs(wildcards):
    """The patch store, and stage 1's model for a two-stage model (else the model's initial weights)."""
    inputs = {"store": f"{RESULTS}/patches/patches.h5"}
    if wildcards.model in PRETRAINED:
        inputs["stage1"] = f"{RESULTS}/models/{wildcards.model}/stage1/model.pt"
    else:
        inputs |= _weights_input(wildcards.model)
    return inputs


def training_config(block):
    """What training a model depends on: its config block without `predict`, which only the predict rules read,
    so editing a tile size or a detection score threshold re-predicts with the trained weights instead of
    retraining them."""
    return {k: v for k, v in block.items() if k != "predict"}


def stage1_config(model):
    """What stage 1 of a two-stage model depends on (not its stage-2 `train`/`predict` blocks)."""
    return {k: v for k, v in config["models"][model].items() if k not in ("train", "predict")}


def ensemble_member_inputs(wildcards):
    """Mean: the members' probability maps; vote: their post-processed instances."""
    ens = config["ensembles"][wildcards.model]
    kind = "instances" if ens["combine"] == "vote" else "predictions"
    return {kind: [f"{RESULTS}/{kind}/{m}/{wildcards.dataset}" for m in ens["members"]]}


def ensemble_spec_inputs(wildcards):
    return [f"{RESULTS}/models/{m}/spec.json" for m in config["ensembles"][wildcards.model]["members"]]


def volume_data(wildcards):
    """The generated data folder of a synthetic volume, or the user's train/target folders."""
    spec = config["volumes"][wildcards.volume]
    if spec.get("generator"):
        return [f"{RESULTS}/volumes/{wildcards.volume}/data"]
    return [spec["train"], spec["target"]]


def generator_spec(volume):
    """What a synthetic volume's stacks depend on (not its stain, scribbles or spacing: editing those keeps them)."""
    return {k: v for k, v in config["volumes"][volume].items() if k in ("generator", "n_slices", "size", "seed")}


def raw_volume_dirs(wildcards):
    """The training and target stack folders as generated or given."""
    from histoflow.volume import stack_paths

    return stack_paths(config["volumes"][wildcards.volume], f"{RESULTS}/volumes/{wildcards.volume}/data")


def _stain_normalized(volume):
    return config["volumes"][volume]["stain"] != "none"


def volume_stacks(wildcards):
    """What the rules that read a volume's pixels take as input: its stain-normalized stacks, or the stacks."""
    if _stain_normalized(wildcards.volume):
        return [f"{RESULTS}/volumes/{wildcards.volume}/normalized"]
    return volume_data(wildcards)


def volume_dirs(wildcards):
    """The stack folders those rules read (``train``, ``target``): normalized ones when the volume has a stain."""
    raw = raw_volume_dirs(wildcards)
    if _stain_normalized(wildcards.volume):
        base = f"{RESULTS}/volumes/{wildcards.volume}/normalized"
        return {part: f"{base}/{part}" for part in raw}
    return raw


def graphcut_search_inputs(wildcards):
    """What the graph-cut search reads: the validation stack's DDML output, stack and scribbles (graphcut.search:
    validation), or the training slices' in-sample DDML output and features (training_slices)."""
    base = f"{RESULTS}/volumes/{wildcards.volume}"
    if config["graphcut"]["search"] == "training_slices":
        return {"train": f"{base}/ddml/refined_train.npz", "features": f"{base}/features.h5"}
    return {"refined": f"{base}/validation/refined.tif", "scribbles": f"{base}/validation/scribbles.tif",
            "stacks": volume_stacks(wildcards)}


def volume_scribbles(wildcards):
    spec = config["volumes"][wildcards.volume]
    if spec["scribbles"] == "auto":
        return f"{RESULTS}/volumes/{wildcards.volume}/scribbles.tif"
    return spec["scribbles"]


def volume_outputs():
    return [f"{RESULTS}/volumes/{v}/ablation.tsv" for v in VOLUMES] + [
        f"{RESULTS}/volumes/{v}/segmentation/views.png" for v in VOLUMES
    ]


def report_inputs(wildcards):
    pairs = [(m, d) for m in PREDICTORS for d in TEST_DATASETS]
    return {
        "metrics": [f"{RESULTS}/metrics/{m}/{d}.tsv" for m, d in pairs],
        "instances": [f"{RESULTS}/instances/{m}/{d}" for m, d in pairs],
        # objects and per-fibre scores need instances, which a multi-class workflow does not make
        "fibres": [f"{RESULTS}/metrics/{m}/{d}_fibres.json" for m, d in pairs]
        if config["evaluate"]["per_fibre"] and not config["classes"] else [],
        "objects": [] if config["classes"] else [f"{RESULTS}/objects/{m}/{d}" for m, d in pairs],
        "history": [f"{RESULTS}/models/{m}/history.tsv" for m in MODELS]
        + [f"{RESULTS}/models/{m}/stage1/history.tsv" for m in PRETRAINED],
        "specs": [f"{RESULTS}/models/{m}/spec.json" for m in MODELS],
        "normalized": [f"{RESULTS}/normalized/{d}" for d in DATASETS],
        "stain": f"{RESULTS}/stain/target.json",
        "volumes": volume_outputs(),
    }
