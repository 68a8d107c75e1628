"""Synthetic data with known ground truth: the embedded demo, the tests and the benchmarks.

- :mod:`~histoflow.synthetic.fibres`  H&E-like skeletal muscle cross-sections with instance labels (the demo)
- :mod:`~histoflow.synthetic.organs`  serial-section stacks of an organ-like structure (the volume demo)
- :mod:`~histoflow.synthetic.slides`  pyramidal whole-slide TIFFs tiled with fibre texture
- :mod:`~histoflow.synthetic.noise`   smooth random fields and the stain vectors they share

Nothing in the production modules imports this package except to make the demo data.
"""
