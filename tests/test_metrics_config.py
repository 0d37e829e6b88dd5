"""The metrics Hydra group: defaults load, overrides merge, and the whole group composes under Hydra."""

from omegaconf import OmegaConf

from metrics import load_config
from metrics.config import DEFAULT_YAML


def test_defaults_and_overrides_merge():
    c = load_config()
    assert c["fid"]["fallback"] == "fd_evaluator" and c["reference"]["dataset"] == "data"
    c2 = load_config(OmegaConf.create({"reference": {"n": 7}, "fid": {"enabled": False}}))
    assert c2["reference"]["n"] == 7 and c2["reference"]["seed"] == c["reference"]["seed"]
    assert c2["fid"]["enabled"] is False and c2["fid"]["feature"] == 2048


def test_group_composes_with_hydra():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(DEFAULT_YAML.parent.parent), version_base="1.3"):
        cfg = compose(config_name="metrics/default")
    assert cfg.metrics.kid.subsets == load_config()["kid"]["subsets"]


def test_coco_preset_inherits_the_defaults():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose("config", overrides=["metrics=coco"])
    c = load_config(cfg.metrics)
    assert c["resolution"] == 256 and c["resize"] == "bicubic-antialias" and c["fid"]["fallback"] is None
    assert c["evaluator"]["enabled"] is False and c["reference"]["n"] == 30000 and c["floor"] is False
    assert c["kid"]["subset_size"] == load_config()["kid"]["subset_size"]  # the rest comes from default.yaml
