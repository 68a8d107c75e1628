rule report:
    """One self-contained HTML page a scientist can read: config, metrics, curves, overlays, runtimes."""
    input:
        unpack(report_inputs),
    output:
        html=f"{RESULTS}/report.html",
        overlays=report(
            directory(f"{RESULTS}/report_figures"),
            patterns=["{name}.png"],
            caption="../report/overlays.rst",
            category="Overlays",
        ),
    params:
        report=config["report"],
        models=PREDICTORS,
        trained=MODELS,
        volumes=VOLUMES,
        classes=config["classes"],
        references=config["references"],
        per_fibre=config["evaluate"]["per_fibre"],
        datasets=lambda wc: dataset_table(TEST_DATASETS),
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/report.py"
