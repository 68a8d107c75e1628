rule demo_data:
    """Synthetic H&E-like muscle fibre images with known instance labels (seeded, deterministic)."""
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
