rule predict:
    """Tiled, blended inference: one probability map (float32 TIFF) per test image."""
    input:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
        normalized=f"{RESULTS}/normalized/{{dataset}}",
    output:
        directory(f"{RESULTS}/predictions/{{model}}/{{dataset}}"),
    params:
        predict=lambda wc: config["models"][wc.model]["predict"],
        stems=lambda wc: DATASETS[wc.dataset].test,
    log:
        f"{RESULTS}/logs/predict/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{model}}/{{dataset}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
    conda:
        ENV
    script:
        "../scripts/predict.py"


rule postprocess:
    """Threshold, clean up and separate instances (watershed on the distance transform)."""
    input:
        predictions=f"{RESULTS}/predictions/{{model}}/{{dataset}}",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
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
