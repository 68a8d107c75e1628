"""The workflow's stages: one module per rule file, each function what one rule does.

``workflow/rules/<name>.smk`` calls ``histoflow.stages.<name>`` and nothing else (``common.smk`` and
``wsi_common.smk`` hold config loading and input functions). A stage function takes paths and config
dicts, reads its inputs, calls the array-level library (:mod:`histoflow`) and writes its outputs
atomically, so every rule can be run and tested without Snakemake. Stage modules never import each
other, and import torch only inside the functions that need it, so small rules start fast.
"""
