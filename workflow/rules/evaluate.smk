rule evaluate:
    """Pixel, GlaS object, AJI, PQ and detection-AP metrics per test image, against the ground truth."""
    input:
        instances=f"{RESULTS}/instances/{{model}}/{{dataset}}",
        predictions=f"{RESULTS}/predictions/{{model}}/{{dataset}}",
        raw=raw_test_inputs,
    output:
        table=report(
            f"{RESULTS}/metrics/{{model}}/{{dataset}}.tsv",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="{model}",
        ),
        summary=f"{RESULTS}/metrics/{{model}}/{{dataset}}_summary.json",
    params:
        dataset=lambda wc: dataset_table([wc.dataset])[wc.dataset],
        classes=config["classes"],
    log:
        f"{RESULTS}/logs/evaluate/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


rule evaluate_fibres:
    """Per-fibre precision / recall / F1 over a threshold sweep, with fixed (FT) and dynamic (DT) thresholds."""
    input:
        predictions=f"{RESULTS}/predictions/{{model}}/{{dataset}}",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
        normalized=f"{RESULTS}/normalized/{{dataset}}",
        raw=raw_test_inputs,
    output:
        table=report(
            f"{RESULTS}/metrics/{{model}}/{{dataset}}_fibres.tsv",
            caption="../report/fibres.rst",
            category="Evaluation",
            subcategory="{model}",
        ),
        summary=f"{RESULTS}/metrics/{{model}}/{{dataset}}_fibres.json",
    params:
        dataset=lambda wc: dataset_table([wc.dataset])[wc.dataset],
        postprocess=config["postprocess"],
        thresholds=config["evaluate"]["thresholds"],
        fibres_from=config["evaluate"]["fibres_from"],
    log:
        f"{RESULTS}/logs/evaluate_fibres/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_fibres/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/evaluate_fibres.py"


rule export_objects:
    """Instances as QuPath GeoJSON (File > Import objects) with morphometry, and a per-object table."""
    input:
        instances=f"{RESULTS}/instances/{{model}}/{{dataset}}",
        normalized=f"{RESULTS}/normalized/{{dataset}}",
    output:
        directory(f"{RESULTS}/objects/{{model}}/{{dataset}}"),
    params:
        pixel_size_um=lambda wc: DATASETS[wc.dataset].pixel_size_um,
        classification=config["export"]["classification"],
    log:
        f"{RESULTS}/logs/export_objects/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_objects/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/export_objects.py"
