"""Small CPU rules never import torch (its import costs seconds and hundreds of MB per job): the stain
fit, the evaluation and the post-processing run, through the scripts' ``run_logged``, in a fresh process
that has no torch module at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[2] / "workflow"

CODE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    import numpy as np

    from histoflow.io import write_image, write_json
    from histoflow.smk import run_logged
    from histoflow.stages.evaluate import run_evaluate
    from histoflow.stages.postprocess import run_postprocess
    from histoflow.stages.stain import run_fit_stain
    from histoflow.synthetic.fibres import FibreParams, make_fibre_image

    tmp = Path(sys.argv[1])
    image, labels = make_fibre_image(0, FibreParams(size=(96, 96)))
    write_image(tmp / "image.png", image)
    write_image(tmp / "gt" / "a.png", labels.astype(np.uint16))
    write_image(tmp / "pred" / "a.tif", (labels > 0).astype(np.float32))
    write_json(tmp / "spec.json", {"arch": "unet", "target": "masks", "threshold": 0.5})
    job = SimpleNamespace(log=[str(tmp / "job.log")], threads=2)
    run_logged(job, lambda: run_fit_stain(tmp / "image.png", "macenko", {}, tmp / "stain.json"))
    run_logged(job, lambda: run_postprocess(tmp / "pred", tmp / "spec.json",
                                            {"min_size": 5, "split": "watershed"}, tmp / "inst"))
    dataset = {"test": ["a"], "masks": {"a": str(tmp / "gt" / "a.png")}, "mask_type": "instance"}
    run_logged(job, lambda: run_evaluate(tmp / "inst", dataset, tmp / "m.tsv", tmp / "m.json"))
    (tmp / "torch_imported.txt").write_text(str("torch" in sys.modules))  # run_logged took stdout
""")


def test_stain_fit_postprocess_and_evaluate_run_without_torch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(WORKFLOW)}
    # Without an NVIDIA driver the stain code never asks torch for a GPU (histoflow.stain.kernels).
    out = subprocess.run([sys.executable, "-c", CODE, str(tmp_path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr + (tmp_path / "job.log").read_text()
    assert (tmp_path / "torch_imported.txt").read_text() == "False"
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["object_f1_mean"] > 0.9  # the stages really ran: the prediction is the truth's mask
