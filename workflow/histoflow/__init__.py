"""histoflow: histology and microscopy images to segmentations, measurements and reports.

The package holds all logic of the Snakemake workflow; the rules only call it. Every stage is a
module of importable, typed functions that take and return NumPy arrays:

- :mod:`histoflow.demo`        synthetic H&E-like muscle fibre images with known instance labels
- :mod:`histoflow.stain`       stain normalization (Reinhard, Macenko, Vahadane) with ``fit``/``transform``
- :mod:`histoflow.patches`     boundary / weight maps and the HDF5 patch store
- :mod:`histoflow.augment`     batched training augmentation (presets of the seed papers)
- :mod:`histoflow.models`      the model registry (``build_model``): U-Net, multi-field-of-view U-Net
- :mod:`histoflow.train`       training with resumable (preemption-safe) checkpoints
- :mod:`histoflow.tiling`      tiled, blended inference over images of any size, TTA
- :mod:`histoflow.postprocess` thresholding / graph cut, cleanup and instance separation
- :mod:`histoflow.graphcut`    2-D / 3-D max-flow segmentation with seeds
- :mod:`histoflow.ddml`        scribble-driven metric learning
- :mod:`histoflow.volume`      serial-section stacks, scribbles, volume summaries
- :mod:`histoflow.metrics`     pixel, GlaS object, AJI, PQ and detection-AP metrics
- :mod:`histoflow.morphometry` per-object measurements;  :mod:`histoflow.qupath` GeoJSON I/O
- :mod:`histoflow.report`      plots, overlays and the HTML report
"""

__version__ = "0.1.0"
