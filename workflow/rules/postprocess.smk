rule postprocess:
    """Threshold (or graph-cut), clean up and separate instances (watershed on the distance transform)."""
    input:
        predictions=f"{RESULTS}/predictions/{{model}}/{{dataset}}",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
        normalized=f"{RESULTS}/normalized/{{dataset}}",
    output:
        directory(f"{RESULTS}/instances/{{model}}/{{dataset}}"),
    params:
        postprocess=config["postprocess"],
    log:
        f"{RESULTS}/logs/postprocess/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/postprocess/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/postprocess.py"
