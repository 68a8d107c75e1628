rule fit_stain:
    """Fit the stain normalizer once on the target image; its parameters are this rule's output."""
    input:
        stain_target_inputs,
    output:
        report(
            f"{RESULTS}/stain/target.json",
            caption="../report/stain.rst",
            category="Stain normalization",
        ),
    params:
        image=stain_target_image(),
        method=config["stain"]["method"],
        kwargs=config["stain"]["params"],
    log:
        f"{RESULTS}/logs/fit_stain.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_stain.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/fit_stain.py"


rule normalize_stain:
    """Apply the fitted normalizer to every image of a dataset."""
    input:
        raw=raw_dataset_images,
        stain=f"{RESULTS}/stain/target.json",
    output:
        directory(f"{RESULTS}/normalized/{{dataset}}"),
    params:
        images=lambda wc: DATASETS[wc.dataset].images,
        bit_depth=lambda wc: config["datasets"][wc.dataset]["bit_depth"],
    log:
        f"{RESULTS}/logs/normalize_stain/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize_stain/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/normalize_stain.py"
