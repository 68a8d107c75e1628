# Semi-automatic segmentation of serial-section stacks: M-Unet features, scribbles, DDML, 3-D graph cut.
# Editing a volume's scribbles reruns only ddml -> search_graphcut -> graphcut_volume -> evaluate_volume.


rule volume_data:
    """Synthetic training and target organ stacks (serial H&E sections, stain drift, texture borders)."""
    output:
        directory(f"{RESULTS}/volumes/{{volume}}/data"),
    params:
        spec=lambda wc: generator_spec(wc.volume),
    log:
        f"{RESULTS}/logs/volume_data/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/volume_data/{{volume}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/volume_data.py"


rule normalize_volume:
    """Both stacks stain-normalized to the middle training slice (volumes.<name>.stain, e.g. Vahadane)."""
    input:
        volume_data,
    output:
        directory(f"{RESULTS}/volumes/{{volume}}/normalized"),
    params:
        dirs=raw_volume_dirs,
        method=lambda wc: config["volumes"][wc.volume]["stain"],
    log:
        f"{RESULTS}/logs/normalize_volume/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize_volume/{{volume}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/normalize_volume.py"


rule auto_scribbles:
    """A few strokes inside and outside the organ on every n-th target slice (demo / test stand-in for a person)."""
    input:
        volume_data,
    output:
        f"{RESULTS}/volumes/{{volume}}/scribbles.tif",
    params:
        dirs=raw_volume_dirs,
        every=lambda wc: config["volumes"][wc.volume]["scribble_every"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/auto_scribbles/{{volume}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/auto_scribbles.py"


rule predict_volume:
    """A volume model's probability for every target slice (float32 TIFF stack)."""
    input:
        volume_stacks,
        model=f"{RESULTS}/volumes/{{volume}}/models/{{vmodel}}/model.pt",
    output:
        f"{RESULTS}/volumes/{{volume}}/predictions/{{vmodel}}.tif",
    params:
        dirs=volume_dirs,
        predict=lambda wc: config["volume_models"][wc.vmodel]["predict"],
    log:
        f"{RESULTS}/logs/predict_volume/{{volume}}/{{vmodel}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict_volume/{{volume}}/{{vmodel}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/predict_volume.py"


rule volume_features:
    """M-Unet per-pixel features of the target stack and of every n-th training slice (HDF5)."""
    input:
        volume_stacks,
        model=lambda wc: f"{RESULTS}/volumes/{wc.volume}/models/{config['ddml']['features_from']}/model.pt",
    output:
        f"{RESULTS}/volumes/{{volume}}/features.h5",
    params:
        dirs=volume_dirs,
        predict=lambda wc: config["volume_models"][config["ddml"]["features_from"]]["predict"],
        train_every=config["ddml"]["train_every"],
    log:
        f"{RESULTS}/logs/volume_features/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/volume_features/{{volume}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/volume_features.py"


rule ddml:
    """Metric learning on scribble + training pixels, then the refined probability h."""
    input:
        features=f"{RESULTS}/volumes/{{volume}}/features.h5",
        scribbles=volume_scribbles,
    output:
        target=f"{RESULTS}/volumes/{{volume}}/ddml/refined.tif",
        train=f"{RESULTS}/volumes/{{volume}}/ddml/refined_train.npz",
    params:
        ddml=config["ddml"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/ddml/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ddml/{{volume}}.tsv"
    threads: workflow.cores
    conda:
        ENV
    script:
        "../scripts/ddml.py"


rule validation_scribbles:
    """Strokes on every n-th slice of the validation stack, from its labels (the graph-cut search's seeds)."""
    input:
        volume_data,
    output:
        f"{RESULTS}/volumes/{{volume}}/validation/scribbles.tif",
    params:
        dirs=raw_volume_dirs,
        every=lambda wc: config["volumes"][wc.volume]["scribble_every"],
        seed=config["seed"] + 1,  # not the target's strokes
    log:
        f"{RESULTS}/logs/validation_scribbles/{{volume}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/validation_scribbles.py"


rule ddml_validation:
    """DDML trained on the validation stack's scribbles (+ training pixels): its refined probability h."""
    input:
        features=f"{RESULTS}/volumes/{{volume}}/features.h5",
        scribbles=f"{RESULTS}/volumes/{{volume}}/validation/scribbles.tif",
    output:
        f"{RESULTS}/volumes/{{volume}}/validation/refined.tif",
    params:
        ddml=config["ddml"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/ddml_validation/{{volume}}.log",
    threads: workflow.cores
    conda:
        ENV
    script:
        "../scripts/ddml_validation.py"


rule search_graphcut:
    """Grid search of gamma, sigma, delta: 3-D with seeds on the validation stack (or 2-D on training slices)."""
    input:
        unpack(graphcut_search_inputs),
    output:
        f"{RESULTS}/volumes/{{volume}}/graphcut_params.json",
    params:
        grid=config["graphcut"],
        dirs=volume_dirs,
        spacing=lambda wc: config["volumes"][wc.volume].get("spacing_um"),
    log:
        f"{RESULTS}/logs/search_graphcut/{{volume}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/search_graphcut.py"


rule graphcut_volume:
    """One 3-D graph cut over the target stack with the scribbles as hard seeds."""
    input:
        volume_stacks,
        refined=f"{RESULTS}/volumes/{{volume}}/ddml/refined.tif",
        scribbles=volume_scribbles,
        params=f"{RESULTS}/volumes/{{volume}}/graphcut_params.json",
    output:
        mask=f"{RESULTS}/volumes/{{volume}}/segmentation/mask.tif",
        summary=f"{RESULTS}/volumes/{{volume}}/segmentation/summary.json",
        views=report(
            f"{RESULTS}/volumes/{{volume}}/segmentation/views.png",
            caption="../report/volume_views.rst",
            category="Volumes",
            subcategory="{volume}",
        ),
    params:
        dirs=volume_dirs,
        spacing=lambda wc: config["volumes"][wc.volume].get("spacing_um"),
        banded=config["graphcut"]["banded"],
    log:
        f"{RESULTS}/logs/graphcut_volume/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/graphcut_volume/{{volume}}.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../scripts/graphcut_volume.py"


rule evaluate_volume:
    """The ablation table: U-Net, M-Unet, M-Unet + DDML, M-Unet + DDML + graph cut."""
    input:
        volume_stacks,
        predictions=expand(f"{RESULTS}/volumes/{{{{volume}}}}/predictions/{{vmodel}}.tif", vmodel=VOLUME_MODELS),
        specs=expand(f"{RESULTS}/volumes/{{{{volume}}}}/models/{{vmodel}}/spec.json", vmodel=VOLUME_MODELS),
        refined=f"{RESULTS}/volumes/{{volume}}/ddml/refined.tif",
        mask=f"{RESULTS}/volumes/{{volume}}/segmentation/mask.tif",
    output:
        report(
            f"{RESULTS}/volumes/{{volume}}/ablation.tsv",
            caption="../report/ablation.rst",
            category="Volumes",
            subcategory="{volume}",
        ),
    params:
        dirs=volume_dirs,
        vmodels=VOLUME_MODELS,
        features_from=config["ddml"]["features_from"],
    log:
        f"{RESULTS}/logs/evaluate_volume/{{volume}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/evaluate_volume.py"
