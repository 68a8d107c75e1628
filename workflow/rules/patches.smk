rule extract_patches:
    """Cut training patches with masks, instance labels, boundary and weight maps into HDF5."""
    input:
        unpack(patch_inputs),
    output:
        store=f"{RESULTS}/patches/patches.h5",
        split=f"{RESULTS}/patches/split.json",
    params:
        patches=config["patches"],
        seed=config["seed"],
        datasets=lambda wc: dataset_table(TRAIN_DATASETS),
        classes=config["classes"],
    log:
        f"{RESULTS}/logs/extract_patches.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_patches.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/extract_patches.py"
