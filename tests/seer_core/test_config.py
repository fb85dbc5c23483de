"""The config schema: presets load, bad keys and values are errors that name the key."""

from pathlib import Path

import pytest

from seer_core.config import (
    ConfigError,
    SeerConfig,
    config_from_dict,
    load_config,
    preset_names,
)


def test_presets_exist_and_validate() -> None:
    names = preset_names()
    assert {"local", "seer-rg256", "sslight-mobilenet"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), SeerConfig)


def test_seer_preset_matches_the_paper() -> None:
    cfg = load_config("seer-rg256")
    assert cfg.model.trunk == "regnety_256gf"
    assert cfg.model.head_hidden == [8192, 8192] and cfg.model.head_out == 256
    assert not cfg.model.head_batchnorm
    assert cfg.model.prototypes == [16000]
    assert (cfg.swav.temperature, cfg.swav.epsilon, cfg.swav.sinkhorn_iterations) == (
        0.1, 0.05, 10)
    assert cfg.optim.weight_decay == 1e-5 and cfg.train.batch_size == 16
    assert cfg.model.sync_bn_group_size == 64 and cfg.model.activation_checkpointing


def test_sslight_preset() -> None:
    cfg = load_config("sslight-mobilenet")
    assert cfg.augment.recipe == "sslight" and cfg.swav.global_local_alpha == 0.4


def test_defaults_are_valid() -> None:
    cfg = config_from_dict({})
    assert cfg.model.trunk == "regnety_400mf"
    assert cfg.schedule.name == "plateau_halving"


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(
        "local",
        ["train.max_steps=7", "model.prototypes=[100, 200]", "train.amp=bf16",
         "swav.global_local_alpha=0.5", "feed.endpoint_url=http://127.0.0.1:9000"],
    )
    assert cfg.train.max_steps == 7
    assert cfg.model.prototypes == [100, 200]
    assert cfg.train.amp == "bf16"
    assert cfg.swav.global_local_alpha == 0.5
    assert cfg.feed.endpoint_url == "http://127.0.0.1:9000"


def test_a_single_int_is_one_prototype_head() -> None:
    assert load_config("local", ["model.prototypes=300"]).model.prototypes == [300]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.nope=1", "unknown key train.nope; allowed keys in train: batch_size"),
        ("nosection.x=1", "unknown key nosection"),
        ("model.trunk=vit_h", "model.trunk: 'vit_h' is not a known trunk; allowed: "),
        ("schedule.name=step", "schedule.name: 'step' is not allowed; allowed values: "
                               "plateau_halving, warmup_cosine, constant"),
        ("train.batch_size=0", "train.batch_size: 0 is too small; allowed: >= 1"),
        ("train.batch_size=abc", "train.batch_size: 'abc' is not an integer"),
        ("train.use_gpu=maybe", "train.use_gpu: 'maybe' is not a boolean"),
        ("swav.epsilon=0", "swav.epsilon: 0.0 is too small; allowed: > 0"),
        ("swav.global_local_alpha=2", "swav.global_local_alpha: 2.0 is too large"),
        ("swav.crops_for_assign=[0, 9]", "swav.crops_for_assign"),
        ("augment.recipe=dino", "augment.recipe: 'dino' is not allowed; allowed: seer"),
        ("augment.global_scale=[0.5, 0.2]", "augment.global_scale"),
        ("ingest.actors=-1", "ingest.actors: -1 is too small"),
        ("train.amp=fp16", "train.amp: 'fp16' needs train.use_gpu"),
        ("swav.queue_length=5", "per-worker length must be at least train.batch_size"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("local", [override])
    assert fragment in str(info.value)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; allowed presets: .*local"):
        load_config("nope")


def test_yaml_file_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config("sslight-mobilenet", ["train.seed=3"])
    path = tmp_path / "my.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(str(path))
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_lr_scales_with_global_batch() -> None:
    cfg = load_config("local", ["train.batch_size=32", "train.num_workers=4", "optim.lr=0.3",
                               "optim.lr_reference_batch=256"])
    assert cfg.scaled_lr() == pytest.approx(0.3 * 128 / 256)
    cfg = load_config("local", ["optim.lr_reference_batch=0", "optim.lr=0.1"])
    assert cfg.scaled_lr() == pytest.approx(0.1)


def test_eval_section_defaults_and_overrides() -> None:
    ev = config_from_dict({}).eval
    assert (ev.data, ev.protocols, ev.stage, ev.knn_k, ev.temperature) == (
        "runs/labelled", ["knn", "linear"], "res5", [20, 200], 0.07)
    assert (ev.lowshot_fractions, ev.lowshot_seeds, ev.baseline, ev.results) == (
        [0.01, 0.1], [0, 1, 2], "random", None)
    assert (ev.image_size, ev.val_fraction, ev.interval_s, ev.metrics_port) == (
        224, 0.2, 300.0, 9101)
    ev = load_config("local", ["eval.protocols=[knn, lowshot, finetune]", "eval.stage=res4",
                               "eval.knn_k=20", "eval.baseline=none",
                               "eval.results=s3://b/r.jsonl"]).eval
    assert ev.protocols == ["knn", "lowshot", "finetune"] and ev.stage == "res4"
    assert ev.knn_k == [20] and ev.baseline == "none" and ev.results == "s3://b/r.jsonl"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("eval.protocols=[knn, svm]", "eval.protocols[1]: 'svm' is not allowed; allowed "
                                      "values: knn, linear, lowshot, finetune"),
        ("eval.protocols=[]", "eval.protocols: empty; allowed values: knn, linear"),
        ("eval.protocols=[knn, knn]", "eval.protocols: ['knn', 'knn'] has duplicates"),
        ("eval.stage=res3", "eval.stage: 'res3' is not allowed; allowed values: res4, res5"),
        ("eval.knn_k=[0]", "eval.knn_k: 0 is too small; allowed: >= 1"),
        ("eval.knn_k=[]", "eval.knn_k: empty"),
        ("eval.temperature=0", "eval.temperature: 0.0 is too small; allowed: > 0"),
        ("eval.lowshot_fractions=[0.1, 1.5]", "eval.lowshot_fractions: 1.5 is too large"),
        ("eval.val_fraction=1", "eval.val_fraction: 1.0 is too large; allowed: <= 0.9"),
        ("eval.baseline=imagenet", "eval.baseline: 'imagenet' is not allowed; allowed values: "
                                   "none, random"),
        ("eval.metrics_port=70000", "eval.metrics_port: 70000 is too large"),
        ("eval.device=tpu", "eval.device: 'tpu' is not allowed; allowed values: auto, cpu"),
        ("eval.data=' '", "eval.data: empty"),
        ("eval.nope=1", "unknown key eval.nope; allowed keys in eval: data"),
    ],
)
def test_eval_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("local", [override])
    assert fragment in str(info.value)


def test_sync_batchnorm_over_several_cpu_workers_is_a_config_error() -> None:
    """torch's SyncBatchNorm refuses CPU tensors in training: every worker would fail at its
    first step. One CPU worker never converts (a world of one), and GPUs are fine."""
    with pytest.raises(ConfigError) as info:
        load_config("local", ["model.sync_bn_group_size=64", "train.num_workers=2"])
    message = str(info.value)
    for key in ("model.sync_bn_group_size", "train.num_workers", "train.use_gpu"):
        assert key in message
    with pytest.raises(ConfigError, match=r"model\.sync_bn_group_size: 1 \(SyncBatchNorm\)"):
        load_config("local", ["model.sync_bn_group_size=1", "train.num_workers=4"])
    assert load_config("local", ["model.sync_bn_group_size=64"]).train.num_workers == 1
    assert load_config("local", ["model.sync_bn_group_size=-1", "train.num_workers=2",
                                 "train.use_gpu=true"]).model.sync_bn_group_size == -1
    assert load_config("local", ["train.num_workers=2"]).model.sync_bn_group_size == 0


def _endpoint_keys() -> list[str]:
    """Every `*endpoint_url` key of the schema: a key added later is covered by the test."""
    return [f"{section}.{name}" for section, info in SeerConfig.model_fields.items()
            for name in info.annotation.model_fields if name.endswith("endpoint_url")]


def test_every_endpoint_key_is_known() -> None:
    assert {"feed.endpoint_url", "checkpoint.endpoint_url", "eval.endpoint_url"} <= set(
        _endpoint_keys())


@pytest.mark.parametrize("key", _endpoint_keys())
@pytest.mark.parametrize("url", ["http://AKIAXXX:s3cr3tpw@127.0.0.1:9000",
                                 "https://AKIAXXX@minio.example:9000/",
                                 "AKIAXXX:s3cr3tpw@127.0.0.1:9000"])
def test_endpoint_with_credentials_is_refused_without_echoing_them(key: str, url: str) -> None:
    """A user:password@ endpoint would land in every state.pt, Ray's train config and
    `seer config` output: refused at validation, and the message never repeats it."""
    with pytest.raises(ConfigError) as info:
        load_config("local", [f"{key}={url}"])
    message = str(info.value)
    assert message.startswith(f"{key}: must not carry credentials")
    assert "AKIAXXX" not in message and "s3cr3tpw" not in message
    with pytest.raises(ConfigError):  # a checkpoint's stored config is validated alike
        config_from_dict({key.split(".")[0]: {key.split(".")[1]: url}})


def test_endpoint_without_credentials_is_fine() -> None:
    cfg = load_config("local", ["checkpoint.endpoint_url=http://127.0.0.1:9000",
                                "feed.endpoint_url=https://s3.example/path@not-userinfo",
                                "eval.endpoint_url=127.0.0.1:9000"])
    assert cfg.checkpoint.endpoint_url == "http://127.0.0.1:9000"


def test_elastic_workers_are_a_min_max_pair() -> None:
    """Issue 17.7: `train.num_workers: [min, max]` (an elastic group); the LR follows the world
    size the group actually has (linear scaling from optim.lr_reference_batch)."""
    cfg = load_config("local", ["train.num_workers=[1, 2]", "optim.lr_reference_batch=64",
                                "train.batch_size=64", "optim.lr=0.002"])
    assert (cfg.train.min_workers, cfg.train.max_workers, cfg.train.elastic) == (1, 2, True)
    assert cfg.scaled_lr(1) == pytest.approx(0.002) and cfg.scaled_lr(2) == pytest.approx(0.004)
    assert cfg.scaled_lr() == cfg.scaled_lr(2)  # default: the most workers allowed
    fixed = load_config("local", ["train.num_workers=[2, 2]"])
    assert fixed.train.num_workers == 2 and not fixed.train.elastic
    for bad in ("[2, 1]", "[1, 2, 3]", "[0, 2]"):
        with pytest.raises(ConfigError, match=r"train\.num_workers"):
            load_config("local", [f"train.num_workers={bad}"])
    with pytest.raises(ConfigError, match=r"not of \[3\]"):  # 16 rows cannot split over 3
        load_config("local", ["train.num_workers=[2, 4]", "swav.queue_length=16",
                              "train.batch_size=4"])


def test_a_bound_is_stated_once_so_a_config_that_validates_builds() -> None:
    """Issue 19: `schedule.factor` was `<= 1` in the schema and `< 1` in PlateauHalving (and
    `optim.momentum` `<= 1` against LARS's `< 1`), so `--set schedule.factor=1` passed the
    schema and failed in every worker. Each such bound is stated once (seer_core.bounds): the
    config and the constructor refuse with the same words, and every inclusive bound the JSON
    Schema states for these sections builds."""
    from torch import nn

    from seer_core.optim import LARS
    from seer_core.schedules import PlateauHalving
    from seer_core.training.preflight import preflight

    for override in ("schedule.factor=1", "optim.momentum=1"):
        try:
            cfg = load_config("local", ["optim.name=lars", override])
        except ConfigError as exc:
            assert str(exc).startswith(override.split("=")[0] + ": ")
            continue
        preflight(cfg)  # a config that validates is one the workers can build
    with pytest.raises(ConfigError) as config_error:
        load_config("local", ["schedule.factor=1"])
    with pytest.raises(ValueError) as built_error:
        PlateauHalving(base_lr=1.0, warmup_steps=0, patience=5, min_delta=0.0, factor=1.0)
    assert str(config_error.value) == "schedule." + str(built_error.value)
    with pytest.raises(ConfigError) as config_error:
        load_config("local", ["optim.momentum=1"])
    with pytest.raises(ValueError) as built_error:
        LARS(nn.Linear(2, 2).parameters(), lr=0.1, momentum=1.0)
    assert str(config_error.value) == "optim." + str(built_error.value)

    defs = SeerConfig.model_json_schema()["$defs"]
    probed = []
    for section in ("schedule", "optim"):
        for key, prop in defs[f"{section.capitalize()}Config"]["properties"].items():
            for bound in ("minimum", "maximum"):
                if bound in prop:
                    override = f"{section}.{key}={prop[bound]}"
                    preflight(load_config("local", ["optim.name=lars", override]))
                    probed.append(override)
    assert "schedule.patience=1" in probed and "optim.momentum=0" in probed
