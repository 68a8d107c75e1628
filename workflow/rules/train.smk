rule train_model:
    """Train one configured model; checkpoints every epoch and resumes after an interruption."""
    wildcard_constraints:
        model="|".join(MODELS),
    input:
        store=f"{RESULTS}/patches/patches.h5",
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        spec=f"{RESULTS}/models/{{model}}/spec.json",
        history=f"{RESULTS}/models/{{model}}/history.tsv",
        curves=report(
            f"{RESULTS}/models/{{model}}/curves.png",
            caption="../report/curves.rst",
            category="Training",
            subcategory="{model}",
        ),
        augmented=report(
            f"{RESULTS}/models/{{model}}/augmented.png",
            caption="../report/augmented.rst",
            category="Training",
            subcategory="{model}",
        ),
    params:
        model=lambda wc: config["models"][wc.model],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_model/{{model}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/train_model.py"
