"""histoflow: histology and microscopy images to segmentations, measurements and reports.

The package holds all logic of the Snakemake workflow; the rules only call it. Every stage is a
module of importable, typed functions that take and return NumPy arrays:

- :mod:`histoflow.demo`        synthetic H&E-like muscle fibre images with known instance labels
- :mod:`histoflow.stain`       stain normalization (Macenko, Reinhard) with ``fit``/``transform``
- :mod:`histoflow.patches`     boundary / weight maps and the HDF5 patch store
- :mod:`histoflow.models`      the model registry (``build_model``) and the architectures
- :mod:`histoflow.train`       training with resumable checkpoints
- :mod:`histoflow.tiling`      tiled, blended inference over images of any size
- :mod:`histoflow.postprocess` thresholding, cleanup and instance separation
- :mod:`histoflow.metrics`     pixel and object (GlaS) metrics
- :mod:`histoflow.report`      plots, overlays and the HTML report
"""

__version__ = "0.1.0"
