"""histoflow: histology and microscopy images to segmentations, measurements and reports.

The package holds all logic of the Snakemake workflow; the rules only call it. The map:

- :mod:`histoflow.stages`  one module per rule file (``workflow/rules/<name>.smk`` → ``stages/<name>.py``):
  each reads its rule's inputs, calls the library below and writes the outputs atomically. No stage
  imports another; the scripts in ``workflow/scripts`` only unpack Snakemake's object into one call.
- The library: importable, tested functions that take and return arrays.

  - :mod:`~histoflow.stain` (package)  stain normalization: colour, sampling, kernels, normalizers, registry
  - :mod:`~histoflow.wsi` (package)    whole slides: reader, tissue, streaming inference, zarr store, outputs
  - :mod:`~histoflow.models` (package) the model registry and the architectures
  - :mod:`~histoflow.patches` boundary / weight maps and the HDF5 patch store;
    :mod:`~histoflow.augment` batched training augmentation
  - :mod:`~histoflow.train` losses, the training loop, resumable checkpoints;
    :mod:`~histoflow.detection` instance models' detections
  - :mod:`~histoflow.tiling` tiled, blended inference and TTA;
    :mod:`~histoflow.postprocess` thresholds, cleanup, instances, voting
  - :mod:`~histoflow.graphcut` 2-D / 3-D max-flow with seeds; :mod:`~histoflow.ddml` scribble metric learning
  - :mod:`~histoflow.volume` serial-section stacks; :mod:`~histoflow.scribbles` simulated and drawn scribbles
  - :mod:`~histoflow.metrics` pixel, GlaS object, AJI, PQ, AP and per-fibre metrics;
    :mod:`~histoflow.semantic` multi-class masks and scores
  - :mod:`~histoflow.morphometry` per-object measurements; :mod:`~histoflow.qupath` GeoJSON I/O;
    :mod:`~histoflow.annotations` slides annotated in QuPath as a dataset (regions, windows, label tiles);
    :mod:`~histoflow.figures` plots
  - :mod:`~histoflow.io` atomic file / folder writes, image and label reading with clear errors;
    :mod:`~histoflow.device` device choice, load-for-inference, halve-the-batch on out-of-memory;
    :mod:`~histoflow.config`, :mod:`~histoflow.datasets`, :mod:`~histoflow.smk`
- :mod:`histoflow.synthetic`  data with known ground truth (the demo fibres, organ stacks, slides);
  production code imports it only to make the demo data.
"""

__version__ = "0.1.0"
