"""params.yaml validation: unknown keys and out-of-range values name the key."""

from pathlib import Path

import pytest
import yaml

from vireid.config import Config, ConfigError, DataConfig, config_from_dict, config_to_dict, replace

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_round_trip() -> None:
    cfg = config_from_dict({})
    assert cfg == Config()
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_repository_params_yaml_is_valid() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = config_from_dict(params)
    assert cfg.data.synthetic  # the embedded default needs no dataset


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"model": {"memory_size": 0}}, "model.memory_size"),
        ({"loss": {"temperature": -1.0}}, "loss.temperature"),
        ({"data": {"image_height": 100}}, "data.image_height"),
        ({"data": {"image_width": 36}}, "data.image_width"),
        ({"data": {"shard_encoding": "png"}}, "data.shard_encoding"),
        ({"model": {"memry_size": 4}}, "model.memry_size"),
        ({"data": {"synth": {"sed": 1}}}, "data.synth.sed"),
        ({"data": {"synth": {"sysu_val_fraction": 0.0}}}, "data.synth.sysu_val_fraction"),
        ({"data": {"synth": {"sysu_identities": 12, "sysu_val_fraction": 0.04}}},
         "data.synth.sysu_val_fraction"),  # rounds to 0 identities: an unreadable val_id.txt
        ({"trian": {}}, "trian"),
        ({"train": {"milestones": [50, 20]}}, "train.milestones"),
        ({"train": {"use_gpu": "on"}}, "train.use_gpu"),
        ({"model": {"arch": "vgg"}}, "model.arch"),
        ({"model": {"fusion": False, "memory": False}, "loss": {"distill": True}}, "loss.distill"),
    ],
)
def test_bad_values_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(params)
    assert str(err.value).startswith(key + ":")


def test_shard_encoding_values() -> None:
    assert Config().data.shard_encoding == "jpeg"
    assert config_from_dict({"data": {"shard_encoding": "raw"}}).data.shard_encoding == "raw"
    for build in (lambda: config_from_dict({"data": {"shard_encoding": "PNG"}}),
                  lambda: DataConfig(shard_encoding="PNG")):  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as err:
            build()
        assert str(err.value) == "data.shard_encoding: must be one of ['jpeg', 'raw'], got 'PNG'"


def test_replace_revalidates() -> None:
    cfg = replace(Config(), model={"memory_size": 3})
    assert cfg.model.memory_size == 3
    with pytest.raises(ConfigError, match="model.memory_size"):
        replace(cfg, model={"memory_size": 0})
