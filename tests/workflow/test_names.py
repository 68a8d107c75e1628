"""User-chosen names become wildcards and folder names: the dry run plans every job for names with regex
characters and for names that are prefixes of each other, and refuses names that cannot be folder names
before any job."""

from __future__ import annotations

from test_workflow import planned_jobs, smk, tiny_config, write_config


def test_names_with_regex_characters_and_prefixes_plan_every_job(tmp_path):
    cfg = tiny_config()
    unet = cfg["models"]["a"]
    cfg["models"] = {"unet": unet, "unet+aug": unet, "unet(v2)": unet, "unet_b": unet}
    cfg["ensembles"] = {"u+u": {"members": ["unet", "unet+aug"]}}
    cfg["datasets"] = {"glas+extra": cfg["datasets"]["demo"]}
    write_config(tmp_path, cfg)
    jobs = planned_jobs(smk(tmp_path, "-n").stdout)
    for m in cfg["models"]:
        assert f"train_model[model={m}]" in jobs
    for m in [*cfg["models"], "u+u"]:
        assert f"evaluate[model={m}, dataset=glas+extra]" in jobs


def test_a_name_that_cannot_be_a_folder_is_refused_before_any_job(tmp_path):
    cfg = tiny_config()
    cfg["models"]["unet/v2"] = cfg["models"].pop("b")
    write_config(tmp_path, cfg)
    proc = smk(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "models.unet/v2" in out and "letters, digits and . _ - + ( )" in out


def test_unknown_architecture_or_parameter_stops_the_dry_run(tmp_path):
    cfg = tiny_config()
    cfg["models"]["a"]["arch"] = "unett"
    cfg["models"]["b"]["params"]["base_widht"] = 8
    write_config(tmp_path, cfg)
    proc = smk(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train_model" not in proc.stdout
    assert "models.a.arch: unknown architecture 'unett'" in out and "models.b.params.base_widht" in out
