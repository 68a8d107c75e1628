rule demo_data:
    """Synthetic H&E-like muscle fibre images with known instance labels (seeded, deterministic)."""
    wildcard_constraints:
        dataset=one_of(GENERATED),
    output:
        directory(f"{RESULTS}/data/{{dataset}}"),
    params:
        demo=lambda wc: config["demo"],
    log:
        f"{RESULTS}/logs/demo_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_data/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/demo_data.py"


rule annotated_images:
    """The windows of an annotated slide's regions, read from the slide at the dataset's mpp (one image each)."""
    wildcard_constraints:
        dataset=one_of(list(ANNOTATED)),
        slide=one_of(ANNOTATED_SLIDES),
    input:
        slide=lambda wc: ANNOTATED[wc.dataset].slides[wc.slide],
    output:
        directory(f"{RESULTS}/data/{{dataset}}/images/{{slide}}"),
    params:
        windows=annotated_windows,  # from the regions only: editing an object leaves the images alone
        mpp=lambda wc: ANNOTATED[wc.dataset].mpp,
        base_mpp=lambda wc: ANNOTATED[wc.dataset].base_mpp,
    log:
        f"{RESULTS}/logs/annotated_images/{{dataset}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/annotated_images/{{dataset}}/{{slide}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/annotated_images.py"


rule annotated_labels:
    """The label tiles and region masks of an annotated slide's windows, rasterised from its QuPath GeoJSON."""
    wildcard_constraints:
        dataset=one_of(list(ANNOTATED)),
        slide=one_of(ANNOTATED_SLIDES),
    input:
        annotations=lambda wc: ANNOTATED[wc.dataset].annotation_files[wc.slide],
    output:
        directory(f"{RESULTS}/data/{{dataset}}/labels/{{slide}}"),
    params:
        windows=annotated_windows,
        classes=lambda wc: ANNOTATED[wc.dataset].classes,
        regions=lambda wc: ANNOTATED[wc.dataset].regions,
        downsample=lambda wc: ANNOTATED[wc.dataset].downsample[wc.slide],
        level0=lambda wc: ANNOTATED[wc.dataset].level0[wc.slide],
        multiclass=bool(config["classes"]),
    log:
        f"{RESULTS}/logs/annotated_labels/{{dataset}}/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/annotated_labels/{{dataset}}/{{slide}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/annotated_labels.py"
