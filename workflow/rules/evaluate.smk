rule evaluate:
    """Pixel, GlaS object, AJI, PQ and detection-AP metrics per test image, against the ground truth."""
    input:
        instances=f"{RESULTS}/instances/{{model}}/{{dataset}}",
        predictions=f"{RESULTS}/predictions/{{model}}/{{dataset}}",
        raw=raw_dataset_inputs,
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
    log:
        f"{RESULTS}/logs/evaluate/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
