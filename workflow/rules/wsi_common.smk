# Whole slides: the slides of the config, their checks, and the input functions of workflow/rules/wsi.smk.

from histoflow.config import ConfigError  # noqa: E402
from histoflow.wsi import find_slides, root_file  # noqa: E402


def _annotated_slides():
    """The annotated slides predicted whole (datasets' predict_slides); their resolution is the dataset's mpp unless
    slides.mpp or slides.level says otherwise."""
    cfg, slides = config["slides"], {}
    for name, d in ANNOTATED.items():
        chosen = {"test": d.test_slides, "all": list(d.slides), "none": []}[d.predict_slides]
        slides |= {s: d.slides[s] for s in chosen}
        if chosen and cfg["mpp"] is None and cfg["level"] is None:
            cfg["mpp"] = d.mpp
            cfg["base_mpp"] = cfg["base_mpp"] or d.base_mpp
    return slides


def _slides_setup():
    cfg = config["slides"]
    slides = {n: str(p) for n, p in find_slides(cfg["images"], ".").items()} if cfg["images"] else {}
    for name, path in _annotated_slides().items():
        if slides.get(name, path) != path:
            raise ConfigError(f"config.yaml is invalid:\n  slides.images: {name!r} is {slides[name]}, but an annotated "
                              f"dataset's slide of that name is {path}; rename one of them.")
        slides[name] = path
    if not slides:
        return {}, None
    if cfg["mpp"] is not None and cfg["level"] is not None:
        raise ConfigError("config.yaml is invalid:\n  slides: give mpp or level, not both")
    if cfg["overlap"] >= cfg["tile"]:
        raise ConfigError("config.yaml is invalid:\n  slides.overlap: must be smaller than slides.tile")
    model = cfg["model"] or MODELS[0]
    if model not in MODELS:
        raise ConfigError(f"config.yaml is invalid:\n  slides.model: {model!r} is not a trained model "
                          f"(choose from {MODELS})")
    return slides, model


SLIDES, SLIDE_MODEL = _slides_setup()
ZARR_ROOT = root_file()  # user-facing zarr stores are outputs by their root metadata file
SLIDE_DIR = f"{RESULTS}/slides/{{slide}}/{{model}}"
_SLIDE_WILDCARDS = {"slide": one_of(list(SLIDES)), "region": r"\d+"}


def slide_params(*keys):
    """The slides settings a rule's results depend on (speed-only settings are read by the scripts)."""
    cfg = config["slides"]
    return {k: cfg[k] for k in ("mpp", "level", "base_mpp", "backend", *keys)}


def slide_stain_input(wildcards):
    return [f"{RESULTS}/stain/target.json"] if config["slides"]["stain"] else []


def slide_region_stores(wildcards):
    return [f"{RESULTS}/slides/{wildcards.slide}/{wildcards.model}/regions/{r}.zarr"
            for r in range(config["slides"]["regions"])]


def slide_output_files(model, slide):
    base = f"{RESULTS}/slides/{slide}/{model}"
    files = {"probability": f"{base}/probability.ome.tif", "summary": f"{base}/summary.json"}
    if config["slides"]["outputs"]["instances"]:
        files |= {"labels": f"{base}/labels.ome.tif", "objects": f"{base}/objects.geojson"}
    return files


def slide_targets():
    return [f for s in SLIDES for f in slide_output_files(SLIDE_MODEL, s).values()]
