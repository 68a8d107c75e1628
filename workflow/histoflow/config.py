"""Configuration: schema validation with defaults, and errors that name the key path."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """config.yaml is invalid; the message names each offending key path."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Return a copy of ``instance`` with every schema ``default`` filled in, recursively.

    Handles ``properties``, schema-valued ``additionalProperties`` (so each model and dataset entry
    gets its own defaults) and local ``$ref``s (``#/...``), which plain jsonschema validation does not.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(instance, dict) or not isinstance(schema, dict):
        return instance
    out = dict(instance)
    props = schema.get("properties", {})
    for key, sub in props.items():
        sub = _resolve(sub, root)
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in out:
            if key not in props:
                out[key] = fill_defaults(out[key], extra, root)
    return out


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    """Follow a local ``$ref`` (``#/a/b``) to its target schema.

    Keywords beside the ``$ref`` (a ``default``, a ``description``) override the target's, as in JSON
    Schema 2020-12.
    """
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` (defaults filled first) and return the completed copy.

    Raises
    ------
    ConfigError
        Listing every problem as ``key.path: message``, e.g.
        ``models.unet.train.epochs: 'ten' is not of type 'integer'``.
    """
    schema = schema if schema is not None else load_schema()
    full = fill_defaults(config or {}, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(full), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for e in errors:
            msg = e.message
            if e.validator == "additionalProperties":
                msg += " (a typo? see workflow/schemas/config.schema.yaml for the valid keys)"
            if e.validator == "oneOf" and "generator" in e.schema.get("properties", {}):
                msg = ("give one of: 'generator'; both 'images' and 'masks'; or 'slides', 'annotations', 'mpp' and "
                       "'classes' (slides annotated in QuPath)")
            lines.append(f"  {_path(e)}: {msg}")
        raise ConfigError("config.yaml is invalid:\n" + "\n".join(lines))
    return canonical(full)


def canonical(obj: Any) -> Any:
    """Recursively sort mapping keys, so that reordering keys in config.yaml changes nothing.

    Snakemake compares rule ``params`` by their text; without this, moving a key up or down in
    config.yaml would look like a parameter change and rerun jobs.
    """
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def check_ensembles(config: dict[str, Any]) -> list[str]:
    """Names of the configured ensembles, after checking their members are trained models."""
    names = []
    for name, ens in config.get("ensembles", {}).items():
        if name in config["models"]:
            raise ConfigError(f"config.yaml is invalid:\n  ensembles.{name}: the name is already a model's name")
        unknown = [m for m in ens["members"] if m not in config["models"]]
        if unknown:
            raise ConfigError(f"config.yaml is invalid:\n  ensembles.{name}.members: {unknown} are not in models "
                              f"(choose from {sorted(config['models'])})")
        if "weights" in ens and len(ens["weights"]) != len(ens["members"]):
            raise ConfigError(f"config.yaml is invalid:\n  ensembles.{name}.weights: give one weight per member")
        if ens.get("combine") == "vote" and config.get("classes"):
            raise ConfigError(f"config.yaml is invalid:\n  ensembles.{name}.combine: vote compares object instances, "
                              "which a multi-class workflow (top-level classes:) does not make; use combine: mean")
        names.append(name)
    return names


MODELS_DIR = Path(__file__).resolve().parent / "models"


def _accepted(fn: Any, classes: dict[str, Any]) -> set[str] | None:
    """Keyword parameters of an ``ast.FunctionDef`` (``None``: ``**kwargs`` not forwarded to a known class)."""
    import ast

    a = fn.args
    names = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]} - {"self"}
    if a.kwarg is None:
        return names
    for node in ast.walk(fn):  # def f(**kwargs): return Cls(**kwargs)
        if (isinstance(node, ast.Return) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id in classes):
            return _init_accepted(classes[node.value.func.id], classes)
    return None


def _init_accepted(cls: Any, classes: dict[str, Any]) -> set[str] | None:
    import ast

    init = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    return set() if init is None else _accepted(init, classes)


def architecture_parameters() -> dict[str, set[str] | None]:
    """Registered architecture name -> the keyword parameters its constructor accepts.

    Read from the model sources without importing them (torch would add seconds to every parse of the
    workflow). Each ``@register_model("name")`` class contributes its ``__init__``'s parameters, a factory
    function its own; a factory taking only ``**kwargs`` and returning ``Cls(**kwargs)`` contributes
    ``Cls.__init__``'s. ``None``: parameters that cannot be read statically (any keyword accepted).
    """
    import ast

    out: dict[str, set[str] | None] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for node in tree.body:
            for deco in getattr(node, "decorator_list", []):
                if (isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "register_model"
                        and deco.args and isinstance(deco.args[0], ast.Constant)):
                    out[deco.args[0].value] = (_init_accepted(node, classes) if isinstance(node, ast.ClassDef)
                                               else _accepted(node, classes))
    return out


def check_architectures(config: dict[str, Any]) -> None:
    """Every model's ``arch`` is registered and its ``params`` are parameters of that architecture.

    Checked when the workflow is parsed (before any job), with the key path and the accepted names in the message.
    """
    known = architecture_parameters()
    errors = []
    for name, m in config.get("models", {}).items():
        arch = m.get("arch")
        if arch not in known:
            errors.append(f"  models.{name}.arch: unknown architecture {arch!r}; choose from {sorted(known)}")
            continue
        accepted = known[arch]
        if accepted is None:
            continue
        for key in m.get("params") or {}:
            if key not in accepted:
                close = sorted(accepted - {"in_channels", "out_channels"})
                errors.append(f"  models.{name}.params.{key}: {arch} has no parameter {key!r}; its parameters are "
                              f"{close}")
    if errors:
        raise ConfigError("config.yaml is invalid:\n" + "\n".join(errors))


# Architectures that segment object instances through detections (histoflow.detection); kept here,
# without importing torch, so the workflow checks them when it parses config.yaml.
# tests/unit/test_config.py checks it against the models' own ``instance_model`` flag.
INSTANCE_ARCHS = ("mask_rcnn", "usnet")


NAME_CHARACTERS = "letters, digits and . _ - + ( )"
_NAME = re.compile(r"[A-Za-z0-9_+()\-][A-Za-z0-9._+()\-]*")


def check_names(config: dict[str, Any]) -> None:
    """Every user-chosen name that becomes a wildcard and a folder name is usable as both.

    Models, ensembles, datasets, volumes, volume models and slides: :data:`NAME_CHARACTERS` only, not starting
    with a dot (a ``/`` would make a sub-folder, a space breaks shell commands). Raises :class:`ConfigError`
    naming every offending key.
    """
    slides = (config.get("slides") or {}).get("images")
    sections = {key: config.get(key) or {} for key in ("models", "ensembles", "datasets", "volumes", "volume_models")}
    sections["slides.images"] = slides if isinstance(slides, dict) else {}
    errors = [f"  {key}.{name}: {name!r} cannot be a folder and wildcard name; use {NAME_CHARACTERS} only (not "
              "starting with a dot)" for key, names in sections.items() for name in names
              if not _NAME.fullmatch(str(name))]
    if errors:
        raise ConfigError("config.yaml is invalid:\n" + "\n".join(errors))


def check_volumes(config: dict[str, Any]) -> None:
    """``graphcut.search: validation`` needs a validation stack for every volume that is not generated."""
    if config["graphcut"]["search"] != "validation":
        return
    for name, spec in (config.get("volumes") or {}).items():
        if not spec.get("generator") and not spec.get("validation"):
            raise ConfigError(f"config.yaml is invalid:\n  volumes.{name}: the graph-cut parameters are chosen on a "
                              "validation stack (graphcut.search: validation); give one as volumes."
                              f"{name}.validation (a labelled stack like train, never trained on), or set "
                              "graphcut.search: training_slices.")


def check_models(config: dict[str, Any]) -> None:
    """Settings an instance model cannot honour fail when the workflow is parsed, not after training."""
    errors = []
    scale = config.get("patches", {}).get("scale", 1.0)
    long_side = config.get("patches", {}).get("long_side")
    if long_side and scale != 1.0:
        errors.append(f"patches.long_side: {long_side} gives each image its own scale; it cannot be combined with "
                      f"patches.scale: {scale} - keep one of them")
    resized = f"patches.scale: {scale}" if scale != 1.0 else (f"patches.long_side: {long_side}" if long_side else "")
    if resized and config.get("slides", {}).get("images"):
        errors.append(f"{resized} - slides are predicted at their own resolution (slides.mpp / "
                      "slides.level), not at a working resolution; drop it in a workflow with slides")
    for name, m in config.get("models", {}).items():
        if m["arch"] not in INSTANCE_ARCHS:
            continue
        if resized:
            errors.append(f"models.{name}: {m['arch']} detects boxes in the image's own pixels; {resized} is for "
                          "semantic models (unet, rescrnet, vgg16_mdn): drop it")
        if config.get("classes"):
            errors.append(f"models.{name}: {m['arch']} segments object instances, but the workflow is multi-class "
                          "(top-level classes:); use unet or rescrnet there")
        if m.get("predict", {}).get("tta", "none") != "none":
            errors.append(f"models.{name}.predict.tta: detections cannot be averaged over flips; set tta: none "
                          "(an ensemble can average this model's probability map with others)")
        if m.get("pretrain"):
            errors.append(f"models.{name}.pretrain: two-stage training is for boundary/interior models; "
                          f"{m['arch']} trains in one stage (remove pretrain)")
    if errors:
        raise ConfigError("config.yaml is invalid:\n  " + "\n  ".join(errors))
