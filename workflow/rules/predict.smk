rule predict:
    """Tiled, blended inference: one probability map (float32 TIFF) per test image."""
    wildcard_constraints:
        model=one_of(MODELS),
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


rule ensemble_predict:
    """An ensemble's probability maps: the (weighted) mean of its members' maps, or, with
    combine: vote, the objects a weighted majority of the members' instances agree on."""
    wildcard_constraints:
        model=one_of(ENSEMBLES),
    input:
        unpack(ensemble_member_inputs),
    output:
        directory(f"{RESULTS}/predictions/{{model}}/{{dataset}}"),
    params:
        weights=lambda wc: config["ensembles"][wc.model].get("weights"),
        combine=lambda wc: config["ensembles"][wc.model]["combine"],
        vote_fraction=lambda wc: config["ensembles"][wc.model]["vote_fraction"],
    log:
        f"{RESULTS}/logs/ensemble_predict/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ensemble_predict/{{model}}/{{dataset}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/ensemble_predict.py"


rule ensemble_spec:
    """An ensemble's spec: its members and the weighted mean of their thresholds."""
    wildcard_constraints:
        model=one_of(ENSEMBLES),
    input:
        ensemble_spec_inputs,
    output:
        f"{RESULTS}/models/{{model}}/spec.json",
    params:
        members=lambda wc: config["ensembles"][wc.model]["members"],
        weights=lambda wc: config["ensembles"][wc.model].get("weights"),
        combine=lambda wc: config["ensembles"][wc.model]["combine"],
        vote_fraction=lambda wc: config["ensembles"][wc.model]["vote_fraction"],
    log:
        f"{RESULTS}/logs/ensemble_spec/{{model}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/ensemble_spec.py"
