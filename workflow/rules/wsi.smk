# Whole slides (config `slides:`; off while slides.images is empty): slide_tissue -> predict_slide_region
# (one GPU job per region) -> merge_slide -> slide_outputs (pyramidal OME-TIFF, zarr, QuPath GeoJSON).


rule slide_tissue:
    """Thumbnail, tissue mask and the slide's own staining, estimated once for all of its regions."""
    wildcard_constraints:
        **_SLIDE_WILDCARDS,
    input:
        slide=lambda wc: SLIDES[wc.slide],
        stain=slide_stain_input,
    output:
        info=f"{RESULTS}/slides/{{slide}}/tissue.json",
        mask=f"{RESULTS}/slides/{{slide}}/tissue.png",
        thumbnail=f"{RESULTS}/slides/{{slide}}/thumbnail.png",
    params:
        slides=slide_params("tissue", "tile", "overlap", "stain"),
    log:
        f"{RESULTS}/logs/slide_tissue/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/slide_tissue/{{slide}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/slide_tissue.py"


rule predict_slide_region:
    """One row band of a slide through the model (tissue tiles only) into a zarr store."""
    wildcard_constraints:
        model=one_of(MODELS),
        **_SLIDE_WILDCARDS,
    input:
        slide=lambda wc: SLIDES[wc.slide],
        tissue=f"{RESULTS}/slides/{{slide}}/tissue.json",
        mask=f"{RESULTS}/slides/{{slide}}/tissue.png",
        model=f"{RESULTS}/models/{{model}}/model.pt",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
        stain=slide_stain_input,
    output:
        directory(f"{SLIDE_DIR}/regions/{{region}}.zarr"),
    params:
        slides=slide_params("tissue", "tile", "overlap", "blend", "regions", "stain"),
        predict=lambda wc: config["models"][wc.model]["predict"],
    log:
        f"{RESULTS}/logs/predict_slide_region/{{model}}/{{slide}}/{{region}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_slide_region/{{model}}/{{slide}}/{{region}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=16000,
    conda:
        ENV
    script:
        "../scripts/predict_slide_region.py"


rule merge_slide:
    """The regions' row bands concatenated into the slide's probability map (OME-NGFF zarr image, float32)."""
    wildcard_constraints:
        model=one_of(MODELS),
        **_SLIDE_WILDCARDS,
    input:
        slide_region_stores,
    output:
        f"{SLIDE_DIR}/probability.zarr/{ZARR_ROOT}",  # the store by its root file: no timestamp file inside
    log:
        f"{RESULTS}/logs/merge_slide/{{model}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_slide/{{model}}/{{slide}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/merge_slide.py"


rule slide_outputs:
    """Pyramidal OME-TIFFs (probability, instance labels), the labels as an OME-NGFF label image, objects as
    QuPath GeoJSON, summary."""
    wildcard_constraints:
        model=one_of(MODELS),
        **_SLIDE_WILDCARDS,
    input:
        prob=f"{SLIDE_DIR}/probability.zarr/{ZARR_ROOT}",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
    output:
        **{k: v for k, v in slide_output_files("{model}", "{slide}").items()},
        **({"labels_zarr": f"{SLIDE_DIR}/labels.zarr/{ZARR_ROOT}"} if config["slides"]["outputs"]["instances"] else {}),
    params:
        slides=slide_params("instances", "outputs"),
        postprocess=config["postprocess"],
        classification=config["export"]["classification"],
    log:
        f"{RESULTS}/logs/slide_outputs/{{model}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/slide_outputs/{{model}}/{{slide}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        ENV
    script:
        "../scripts/slide_outputs.py"
