"""Tests for histoflow.config (schema defaults and key-path errors), the schema itself, and histoflow.datasets."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from histoflow.config import ConfigError, fill_defaults, load_schema, validate_config
from histoflow.datasets import resolve_dataset, resolve_datasets, split_test
from histoflow.io import InputError
from histoflow.synthetic.fibres import demo_stems

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# defaults


def test_empty_config_gets_every_default():
    cfg = validate_config({})
    assert cfg["results"] == "results" and cfg["device"] == "auto" and cfg["seed"] == 0
    assert cfg["demo"] == {"n_images": 20, "size": 256, "fibre_diameter": 40.0, "seed": 0}
    assert cfg["patches"]["size"] == 128 and cfg["patches"]["mode"] == "random"
    assert cfg["patches"]["weight_w0"] == 10.0 and cfg["patches"]["val_fraction"] == 0.2
    assert cfg["stain"] == {"method": "macenko", "target": "", "params": {}}
    assert cfg["datasets"]["demo"] == {"generator": "muscle_fibres", "mask_type": "instance", "split": "auto",
                                       "test_fraction": 0.25, "limit": None, "bit_depth": "auto"}
    assert cfg["references"] == {}
    unet = cfg["models"]["unet"]
    assert unet["arch"] == "unet" and unet["params"] == {}
    assert unet["train"]["epochs"] == 20 and unet["train"]["lr"] == 0.001
    assert unet["train"]["max_steps_per_epoch"] is None and unet["train"]["target"] == "masks"
    assert unet["predict"] == {"tile": 256, "overlap": 64, "batch_size": 4, "blend": "gaussian", "tta": "none",
                               "score_threshold": 0.4, "nms_iou": 0.5, "mask_threshold": 0.3, "precision": "auto",
                               "backend": "auto"}
    assert unet["train"]["precision"] == "auto"
    assert cfg["postprocess"]["threshold"] is None and cfg["postprocess"]["split"] == "watershed"
    assert cfg["report"]["dpi"] == 100
    assert validate_config(None) == cfg


def test_model_and_dataset_entries_get_nested_defaults():
    given = {
        "models": {"small": {"arch": "unet", "params": {"base_width": 8}, "train": {"epochs": 3}}},
        "datasets": {"mine": {"images": "a", "masks": "b", "split": "test"}},
    }
    snapshot = copy.deepcopy(given)
    cfg = validate_config(given)
    assert given == snapshot  # the input is not modified
    small = cfg["models"]["small"]
    assert small["params"] == {"base_width": 8}
    assert small["train"]["epochs"] == 3 and small["train"]["batch_size"] == 8
    assert small["train"]["use_weight_map"] is True and small["predict"]["tile"] == 256
    assert set(cfg["models"]) == {"small"}  # a given section replaces the default entries
    assert cfg["datasets"] == {"mine": {"images": "a", "masks": "b", "split": "test", "mask_type": "instance",
                                        "test_fraction": 0.25, "limit": None, "bit_depth": "auto"}}


def test_fill_defaults_keeps_given_values_and_non_dicts():
    schema = {"properties": {"a": {"default": 1}, "b": {"properties": {"c": {"default": 2}}, "default": {}}}}
    assert fill_defaults({}, schema) == {"a": 1, "b": {"c": 2}}
    assert fill_defaults({"a": 5, "b": {"c": 7}}, schema) == {"a": 5, "b": {"c": 7}}
    assert fill_defaults(3, schema) == 3


def test_repo_config_validates():
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    unet = cfg["models"]["unet"]
    assert unet["params"] == {"base_width": 16, "depth": 3}
    assert unet["train"]["lr"] == 0.002 and unet["train"]["weight_decay"] == 0.0001  # given + default
    assert cfg["datasets"]["demo"]["generator"] == "muscle_fibres"


# ---------------------------------------------------------------------------------------------
# errors


def test_typo_key_is_named():
    with pytest.raises(ConfigError) as exc:
        validate_config({"patchs": {"size": 64}})
    assert "'patchs'" in str(exc.value) and "typo" in str(exc.value)
    with pytest.raises(ConfigError, match=r"models\.unet\.train.*'epoch'"):
        validate_config({"models": {"unet": {"arch": "unet", "train": {"epoch": 3}}}})


def test_wrong_type_names_the_key_path():
    with pytest.raises(ConfigError) as exc:
        validate_config({"models": {"unet": {"arch": "unet", "train": {"epochs": "ten"}}}})
    assert "models.unet.train.epochs: 'ten' is not of type 'integer'" in str(exc.value)


def test_every_error_is_listed():
    with pytest.raises(ConfigError) as exc:
        validate_config({"seed": "x", "patches": {"size": 8}, "device": "tpu"})
    msg = str(exc.value)
    assert msg.startswith("config.yaml is invalid:")
    assert "  device:" in msg and "  patches.size:" in msg and "  seed:" in msg
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("entry", [{"mask_type": "binary"}, {"images": "imgs"},
                                   {"generator": "muscle_fibres", "images": "a", "masks": "b"}])
def test_dataset_needs_generator_xor_folders(entry):
    with pytest.raises(ConfigError, match=r"datasets\.mine: give one of: 'generator'; both 'images' and 'masks'"):
        validate_config({"datasets": {"mine": entry}})


def test_model_needs_arch_and_sections_need_entries():
    with pytest.raises(ConfigError, match=r"models\.m: 'arch' is a required property"):
        validate_config({"models": {"m": {"params": {}}}})
    with pytest.raises(ConfigError, match="models"):
        validate_config({"models": {}})


# ---------------------------------------------------------------------------------------------
# the schema


def _walk(schema: dict, path: str, parent_described: bool, found: list[str]) -> None:
    for key, sub in schema.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if "description" not in sub and not parent_described:
            found.append(here)
        _walk(sub, here, "description" in sub, found)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        _walk(extra, f"{path}.*", parent_described, found)


def test_schema_is_documented():
    schema = load_schema()
    assert schema["additionalProperties"] is False
    for key, sub in schema["properties"].items():
        assert sub.get("description"), key
        assert "default" in sub, key
    undocumented: list[str] = []
    _walk(schema, "", False, undocumented)
    assert undocumented == []


def test_schema_defaults_are_valid():
    schema = load_schema()
    # The defaults of the top level alone must form a valid configuration.
    defaults = {k: copy.deepcopy(v["default"]) for k, v in schema["properties"].items()}
    assert validate_config(defaults) == validate_config({})


# ---------------------------------------------------------------------------------------------
# datasets


def test_split_test_roles_and_seeded_split():
    stems = [f"s{i}" for i in range(8)]
    assert split_test(stems[::-1], "train", 0.25, 0) == (stems, [])
    assert split_test(stems[::-1], "test", 0.25, 0) == ([], stems)
    train, test = split_test(stems, "auto", 0.25, 3)
    assert (train, test) == split_test(stems, "auto", 0.25, 3)
    assert len(test) == 2 and len(train) == 6
    assert set(train).isdisjoint(test) and sorted(train + test) == stems
    assert len({tuple(split_test(stems, "auto", 0.25, s)[1]) for s in range(10)}) > 1
    assert len(split_test(["a", "b", "c"], "auto", 0.05, 0)[1]) == 1  # at least one test image
    assert len(split_test(["a", "b"], "auto", 0.9, 0)[0]) == 1  # and at least one training image
    assert split_test(["a", "b"], "auto", 0.0, 0) == (["a", "b"], [])


def _folders(tmp_path: Path, images: list[str], masks: list[str]) -> dict:
    for sub, names in (("images", images), ("masks", masks)):
        (tmp_path / sub).mkdir(exist_ok=True)
        for name in names:
            (tmp_path / sub / name).write_bytes(b"")
    return validate_config({"datasets": {"mine": {"images": str(tmp_path / "images"),
                                                  "masks": str(tmp_path / "masks"), "test_fraction": 0.34}}})


def test_resolve_dataset_pairs_by_stem(tmp_path):
    config = _folders(tmp_path, ["b.png", "a.tif", "c.jpg", "notes.txt", ".hidden.png"],
                      ["a.png", "b.png", "c.tiff", "extra.png"])
    ds = resolve_dataset("mine", config["datasets"]["mine"], config)
    assert ds.name == "mine" and ds.mask_type == "instance" and ds.pixel_size_um is None
    assert ds.stems == ["a", "b", "c"]
    assert ds.images == {s: str(tmp_path / "images" / f) for s, f in (("a", "a.tif"), ("b", "b.png"),
                                                                      ("c", "c.jpg"))}
    assert ds.masks == {s: str(tmp_path / "masks" / f) for s, f in (("a", "a.png"), ("b", "b.png"),
                                                                     ("c", "c.tiff"))}
    assert sorted(ds.train + ds.test) == ["a", "b", "c"] and len(ds.test) == 1
    assert (ds.train, ds.test) == split_test(["a", "b", "c"], "auto", 0.34, config["seed"])


def test_resolve_dataset_missing_mask_names_the_image(tmp_path):
    config = _folders(tmp_path, ["a.png", "b.png"], ["a.png"])
    with pytest.raises(InputError) as exc:
        resolve_dataset("mine", config["datasets"]["mine"], config)
    msg = str(exc.value)
    assert str(tmp_path / "images" / "b.png") in msg
    assert "'mine'" in msg and "1 image(s)" in msg


def test_resolve_dataset_empty_or_missing_folders(tmp_path):
    config = _folders(tmp_path, [], ["a.png"])
    with pytest.raises(InputError, match="no image files"):
        resolve_dataset("mine", config["datasets"]["mine"], config)
    entry = dict(config["datasets"]["mine"], masks=str(tmp_path / "nope"))
    with pytest.raises(InputError, match="nope: folder not found"):
        resolve_dataset("mine", entry, config)


def test_resolve_datasets_generator_and_roles(tmp_path):
    config = validate_config({"results": "out", "demo": {"n_images": 4},
                              "datasets": {"demo": {"generator": "muscle_fibres", "split": "test"}}})
    ds = resolve_dataset("demo", config["datasets"]["demo"], config)
    stems = demo_stems(4)
    assert ds.stems == sorted(stems) and ds.test == sorted(stems) and ds.train == []
    assert ds.images[stems[0]] == f"out/data/demo/images/{stems[0]}.png"
    assert ds.masks[stems[0]] == f"out/data/demo/labels/{stems[0]}.png"
    with pytest.raises(InputError, match="no dataset has training images"):
        resolve_datasets(config)
    config["datasets"]["demo"]["split"] = "auto"
    assert set(resolve_datasets(config)) == {"demo"}


def test_dataset_limit_keeps_the_first_stems_in_sorted_order(tmp_path):
    names = ["x_1.png", "x_10.png", "x_2.png", "x_3.png"]
    config = _folders(tmp_path, names, ["x_1.png", "x_10.png"])  # the images left out need no mask
    config["datasets"]["mine"].update(limit=2, split="test")
    ds = resolve_dataset("mine", config["datasets"]["mine"], config)
    assert ds.stems == ["x_1", "x_10"] and ds.test == ["x_1", "x_10"] and set(ds.masks) == {"x_1", "x_10"}
    config["datasets"]["mine"]["limit"] = 3
    with pytest.raises(InputError, match="no mask"):
        resolve_dataset("mine", config["datasets"]["mine"], config)
    with pytest.raises(ConfigError, match="datasets.mine.limit"):
        validate_config({"datasets": {"mine": {"images": "a", "masks": "b", "limit": 0}}})
    demo = validate_config({"demo": {"n_images": 5}, "datasets": {"d": {"generator": "muscle_fibres", "limit": 3}}})
    ds = resolve_dataset("d", demo["datasets"]["d"], demo)
    assert ds.stems == sorted(demo_stems(5))[:3] and sorted(ds.masks) == ds.stems


def test_dataset_stems_select_images_by_name_and_reject_unknown_ones(tmp_path):
    names = ["x_1.png", "x_10.png", "x_2.png", "x_3.png"]
    config = _folders(tmp_path, names, ["x_2.png", "x_3.png"])  # only the selected images need masks
    config["datasets"]["mine"].update(stems=["x_3", "x_2"], split="test")
    ds = resolve_dataset("mine", config["datasets"]["mine"], config)
    assert ds.stems == ["x_2", "x_3"] and set(ds.masks) == {"x_2", "x_3"}
    config["datasets"]["mine"]["limit"] = 1  # limit applies after the selection: the first selected stem
    assert resolve_dataset("mine", config["datasets"]["mine"], config).stems == ["x_2"]
    config["datasets"]["mine"].update(stems=["x_2", "x_4"], limit=None)
    with pytest.raises(InputError, match=r"no image with the stem\(s\) \['x_4'\]"):
        resolve_dataset("mine", config["datasets"]["mine"], config)
    with pytest.raises(ConfigError, match="datasets.mine.stems"):
        validate_config({"datasets": {"mine": {"images": "a", "masks": "b", "stems": []}}})


def test_references_are_validated_and_must_name_a_test_dataset():
    ref = {"method": "DCAN", "source": "Chen et al., CVPR 2016", "metrics": {"object_f1_pooled": 0.912}}
    config = validate_config({"demo": {"n_images": 4},
                              "datasets": {"demo": {"generator": "muscle_fibres"}}, "references": {"demo": [ref]}})
    assert config["references"]["demo"][0]["metrics"] == {"object_f1_pooled": 0.912}
    assert set(resolve_datasets(config)) == {"demo"}
    with pytest.raises(InputError, match=r"references.glas_testA: no dataset of that name"):
        resolve_datasets({**config, "references": {"glas_testA": [ref]}})
    with pytest.raises(ConfigError, match="references.demo.0.metrics.object_f1_pooled"):
        validate_config({"references": {"demo": [{**ref, "metrics": {"object_f1_pooled": "high"}}]}})
    with pytest.raises(ConfigError, match="references.demo.0"):
        validate_config({"references": {"demo": [{"method": "DCAN", "metrics": {"aji_mean": 0.5}}]}})


def test_ensembles_are_checked_against_models():
    from histoflow.config import ConfigError, check_ensembles

    base = {"models": {"a": {"arch": "unet"}, "b": {"arch": "unet"}}}
    assert check_ensembles(validate_config({**base, "ensembles": {"ab": {"members": ["a", "b"]}}})) == ["ab"]
    with pytest.raises(ConfigError, match=r"ensembles.ab.members.*\['c'\]"):
        check_ensembles(validate_config({**base, "ensembles": {"ab": {"members": ["a", "c"]}}}))
    with pytest.raises(ConfigError, match="already a model"):
        check_ensembles(validate_config({**base, "ensembles": {"a": {"members": ["a", "b"]}}}))
    with pytest.raises(ConfigError, match="one weight per member"):
        check_ensembles(validate_config({**base, "ensembles": {"ab": {"members": ["a", "b"], "weights": [1]}}}))
    ens = validate_config({**base, "ensembles": {"ab": {"members": ["a", "b"]}}})["ensembles"]["ab"]
    assert ens["combine"] == "mean" and ens["vote_fraction"] == 0.5  # schema defaults
    vote = {"ensembles": {"ab": {"members": ["a", "b"], "combine": "vote"}}}
    with pytest.raises(ConfigError, match="combine: vote"):
        check_ensembles(validate_config({**base, **vote, "classes": ["x", "y"]}))


def test_instance_architectures_are_listed_and_their_impossible_settings_rejected():
    from histoflow.config import INSTANCE_ARCHS, check_models
    from histoflow.models import available_models, build_model

    flagged = {a for a in available_models() if getattr(build_model(a), "instance_model", False)}
    assert flagged == set(INSTANCE_ARCHS)  # the list the workflow checks without importing torch
    ok = validate_config({"models": {"m": {"arch": "mask_rcnn"}}})
    check_models(ok)
    bad = validate_config({"classes": ["a", "b"], "models": {"m": {"arch": "mask_rcnn", "predict": {"tta": "flips"},
                                                                   "pretrain": {"epochs": 1}}}})
    with pytest.raises(ConfigError) as err:
        check_models(bad)
    for key in ("models.m:", "models.m.predict.tta", "models.m.pretrain"):
        assert key in str(err.value)


def test_wildcard_constraints_escape_names_and_try_longer_names_first():
    import re

    from histoflow.smk import one_of

    pattern = one_of(["unet", "unet+aug", "unet(v2)"])
    assert pattern.split("|")[-1] == "unet"  # longest first
    for name in ("unet", "unet+aug", "unet(v2)"):
        assert re.fullmatch(pattern, name)
    assert not re.fullmatch(pattern, "unettt+aug") and not re.fullmatch(pattern, "unetv2")
    assert one_of([]) == "^$"


def test_names_that_cannot_be_folders_are_refused():
    from histoflow.config import check_names

    check_names({"models": {"unet+aug": {}, "unet(v2)": {}, "u.2": {}}, "datasets": {"glas-A": {}}})
    with pytest.raises(ConfigError, match=r"models.unet/v2.*\n.*datasets.\.hidden"):
        check_names({"models": {"unet/v2": {}}, "datasets": {".hidden": {}}})
    with pytest.raises(ConfigError, match="slides.images.my slide"):
        check_names({"slides": {"images": {"my slide": "a.svs"}}})


def test_an_empty_image_file_is_named_as_empty(tmp_path):
    from histoflow.io import read_image, read_labels

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.tif").write_bytes(b"")
    with pytest.raises(InputError, match=r"a.png: the file is empty \(0 bytes\)"):
        read_image(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"m.tif: the file is empty"):
        read_labels(tmp_path / "m.tif")


def test_a_binary_mask_under_mask_type_instance_becomes_its_components(tmp_path, caplog):
    from histoflow.io import read_labels, write_image

    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 2:6] = mask[10:15, 20:28] = mask[16:19, 2:4] = 255  # three separate objects, one value
    write_image(tmp_path / "m.png", mask)
    with caplog.at_level("WARNING"):
        labels = read_labels(tmp_path / "m.png", "instance")
    assert labels.max() == 3 and ((labels > 0) == (mask > 0)).all()
    assert "m.png: holds only 0 and 255 but 3 separate objects" in caplog.text and "mask_type: binary" in caplog.text
    one = np.zeros((20, 30), np.uint16)
    one[2:6, 2:6] = 7  # a genuine single object keeps its id, without a warning
    write_image(tmp_path / "one.png", one)
    caplog.clear()
    assert set(np.unique(read_labels(tmp_path / "one.png"))) == {0, 7} and not caplog.text


def test_architectures_and_their_parameters_are_checked_without_importing_torch():
    import subprocess
    import sys

    from histoflow.config import architecture_parameters, check_architectures
    from histoflow.models import available_models, build_model

    known = architecture_parameters()
    assert sorted(known) == available_models()
    assert {"base_width", "depth", "norm"} <= known["unet"] and "lstm_on" in known["rescrnet"]
    assert {"backbone", "anchor_sizes"} <= known["mask_rcnn"]  # through the factory's MaskRCNN(**kwargs)
    build_model("unet", **{k: v for k, v in {"base_width": 4, "depth": 2, "norm": True}.items() if k in known["unet"]})
    check_architectures({"models": {"u": {"arch": "unet", "params": {"base_width": 8}}}})
    with pytest.raises(ConfigError, match=r"models.u.arch: unknown architecture 'unett'"):
        check_architectures({"models": {"u": {"arch": "unett"}}})
    with pytest.raises(ConfigError, match=r"models.u.params.base_widht: unet has no parameter .*'base_width'"):
        check_architectures({"models": {"u": {"arch": "unet", "params": {"base_widht": 8}}}})
    code = ("import sys; sys.path.insert(0, 'workflow'); from histoflow.config import architecture_parameters; "
            "architecture_parameters(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_every_shipped_config_names_real_parameters():
    from histoflow.config import check_architectures

    root = Path(__file__).resolve().parents[2]
    for path in [root / "config.yaml", *sorted((root / "config").rglob("*.yaml"))]:
        cfg = yaml.safe_load(path.read_text())
        if "models" in cfg and all(isinstance(m, dict) and "arch" in m for m in cfg["models"].values()):
            check_architectures(cfg)


def test_image_and_mask_sizes_are_checked_for_test_images_too(tmp_path):
    from histoflow.datasets import Dataset, check_sizes
    from histoflow.io import image_size, write_image

    write_image(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    write_image(tmp_path / "a_mask.tif", np.zeros((20, 30), np.uint16))
    write_image(tmp_path / "b.png", np.zeros((20, 30, 3), np.uint8))
    write_image(tmp_path / "b_mask.png", np.zeros((30, 20), np.uint8))
    assert image_size(tmp_path / "a.png") == (20, 30) and image_size(tmp_path / "a_mask.tif") == (20, 30)
    paths = {s: str(tmp_path / f"{s}.png") for s in "ab"}
    masks = {"a": str(tmp_path / "a_mask.tif"), "b": str(tmp_path / "b_mask.png")}
    check_sizes({"d": Dataset("d", {"a": paths["a"]}, {"a": masks["a"]}, "instance", ["a"], [])})
    with pytest.raises(InputError, match=r"b_mask.png: mask is 30 x 20 but its test image .*b.png is 20 x 30"):
        check_sizes({"d": Dataset("d", paths, masks, "instance", ["a"], ["b"])})
    (tmp_path / "b_mask.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"b_mask.png: the file is empty"):
        check_sizes({"d": Dataset("d", paths, masks, "instance", ["a"], ["b"])})


def test_validation_search_needs_a_validation_stack():
    from histoflow.config import check_volumes

    cfg = validate_config({"volumes": {"v": {"train": "a", "target": "b"}}})
    with pytest.raises(ConfigError, match=r"volumes.v: the graph-cut parameters are chosen on a validation stack"):
        check_volumes(cfg)
    check_volumes(validate_config({"volumes": {"v": {"train": "a", "target": "b", "validation": "c"}}}))
    check_volumes(validate_config({"volumes": {"v": {"train": "a", "target": "b"}},
                                   "graphcut": {"search": "training_slices"}}))
    check_volumes(validate_config({"volumes": {"v": {"generator": "organ_stack"}}}))  # generated: has one
