"""The captions of ``snakemake --report`` (workflow/report/*.rst) are valid reStructuredText: no substitution
references (``|S∩G|`` is one), no broken inline markup, once the Jinja expressions are filled in."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

docutils_core = pytest.importorskip("docutils.core")

CAPTIONS = sorted((Path(__file__).resolve().parents[2] / "workflow" / "report").glob("*.rst"))


@pytest.mark.parametrize("caption", CAPTIONS, ids=lambda p: p.name)
def test_caption_renders_without_warnings(caption: Path) -> None:
    text = re.sub(r"\{\{.*?\}\}", "name", caption.read_text())  # what Snakemake's Jinja step leaves
    text = re.sub(r"\{%.*?%\}", "", text)
    warnings = io.StringIO()
    docutils_core.publish_string(text, writer="null",
                                 settings_overrides={"warning_stream": warnings, "report_level": 2})
    assert warnings.getvalue() == ""
