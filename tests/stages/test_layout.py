"""The package's map holds: each rule file leads to one stage module of its own name, no stage module
imports another, and no module of the package grows past 800 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

WORKFLOW = Path(__file__).resolve().parents[2] / "workflow"
PACKAGE = WORKFLOW / "histoflow"
# Config loading and input functions, no rules of their own.
SHARED_RULE_FILES = {"common", "wsi_common"}


def stage_modules_of(script: Path) -> set[str]:
    """The ``histoflow.stages.<name>`` modules a rule's script imports."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("histoflow."):
            found.add(node.module)
    return found


@pytest.mark.parametrize("rule_file", sorted(p.stem for p in (WORKFLOW / "rules").glob("*.smk")
                                             if p.stem not in SHARED_RULE_FILES))
def test_each_rule_file_calls_its_own_stage_module_only(rule_file: str) -> None:
    text = (WORKFLOW / "rules" / f"{rule_file}.smk").read_text()
    scripts = re.findall(r'script:\s*"\.\./scripts/([\w.]+)"', text)
    assert scripts, f"{rule_file}.smk runs no script"
    for script in scripts:
        modules = stage_modules_of(WORKFLOW / "scripts" / script) - {"histoflow.smk"}
        assert modules == {f"histoflow.stages.{rule_file}"}, f"{rule_file}.smk -> {script} imports {modules}"


@pytest.mark.parametrize("stage", sorted(p.name for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py"))
def test_no_stage_module_imports_another(stage: str) -> None:
    tree = ast.parse((PACKAGE / "stages" / stage).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            sibling = node.level == 1  # from .x import ...
            absolute = (node.module or "").startswith("histoflow.stages")
            parent = node.level == 2 and (node.module or "").startswith("stages")
            assert not (sibling or absolute or parent), f"stages/{stage}:{node.lineno} imports another stage"


def test_no_module_over_800_lines() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes and max(sizes.values()) <= 800, {k: v for k, v in sizes.items() if v > 800}
