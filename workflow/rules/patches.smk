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


rule volume_patches:
    """Training patches from the labelled training stack."""
    input:
        volume_stacks,
    output:
        store=f"{RESULTS}/volumes/{{volume}}/patches.h5",
        split=f"{RESULTS}/volumes/{{volume}}/patches_split.json",
    params:
        dirs=volume_dirs,
        patches=config["volume_patches"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/volume_patches/{{volume}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/volume_patches.py"
