rule pretrain_model:
    """Stage 1 of two-stage training (models with a `pretrain` block, e.g. fibre boundaries); its
    params leave out the model's `train`/`predict` blocks, so editing stage 2 never reruns it."""
    wildcard_constraints:
        model=one_of(PRETRAINED),
    input:
        unpack(pretrain_inputs),
    output:
        model=f"{RESULTS}/models/{{model}}/stage1/model.pt",
        spec=f"{RESULTS}/models/{{model}}/stage1/spec.json",
        history=f"{RESULTS}/models/{{model}}/stage1/history.tsv",
        curves=report(
            f"{RESULTS}/models/{{model}}/stage1/curves.png",
            caption="../report/curves.rst",
            category="Training",
            subcategory="{model} (stage 1)",
        ),
        augmented=f"{RESULTS}/models/{{model}}/stage1/augmented.png",
    params:
        model=lambda wc: stage1_config(wc.model),
        seed=config["seed"],
        stage="pretrain",
    log:
        f"{RESULTS}/logs/pretrain_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_model/{{model}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/train_model.py"


rule train_model:
    """Train one configured model (stage 2 when it has a `pretrain` block: fine-tuned from stage 1);
    checkpoints every epoch and resumes after an interruption."""
    wildcard_constraints:
        model=one_of(MODELS),
    input:
        unpack(train_inputs),
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
        model=lambda wc: training_config(config["models"][wc.model]),
        seed=config["seed"],
        stage="train",
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


rule train_volume_model:
    """Train a volume model (U-Net baseline, M-Unet) on the training stack's patches."""
    input:
        store=f"{RESULTS}/volumes/{{volume}}/patches.h5",
    output:
        model=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/model.pt",
        spec=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/spec.json",
        history=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/history.tsv",
        curves=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/curves.png",
        augmented=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/augmented.png",
    params:
        model=lambda wc: training_config(config["volume_models"][wc.vmodel]),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_volume_model/{{volume}}/{{vmodel}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_volume_model/{{volume}}/{{vmodel}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
    conda:
        ENV
    script:
        "../scripts/train_model.py"
