"""RunConfig: YAML loading, --set overrides, readable errors, the configs/ shipped with lvmkit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lvmkit.errors import ConfigError
from lvmkit.train.config import (
    RunConfig,
    config_diff,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = ["amn", "gru", "lstm", "transformer", "memory_gru", "hierarchical_gru", "mamba"]


def write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return path


def test_yaml_and_defaults(tmp_path):
    path = write_yaml(
        tmp_path / "c.yaml", {"bank": "banks/x", "model": {"name": "amn"}, "optim": {"lr": 3e-4}}
    )
    cfg = load_config(path)
    assert cfg.bank == Path("banks/x") and cfg.model.name == "amn" and cfg.optim.lr == 3e-4
    assert cfg.data.ctx == 5 and cfg.data.max_per_article == 2 and cfg.loss == {"cos": 1.0}  # defaults
    assert cfg.task == "lvm" and not hasattr(cfg, "twotower")  # the two-tower section is its task's alone


def test_overrides_parse_values_as_yaml(tmp_path):
    path = write_yaml(
        tmp_path / "c.yaml", {"bank": "b", "gates": [{"epoch": 1, "metric": "val_hit@5", "min": 0.1}]}
    )
    cfg = load_config(
        path,
        [
            "optim.lr=3e-4",
            "optim.clip_norm=null",
            "data.pad=false",
            "model.kwargs.hidden=64",
            "loss={mse: 1.0, cos: 0.5}",
            "gates.0.min=0.25",
            "split.ratios=[0.7, 0.2, 0.1]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.clip_norm is None and cfg.data.pad is False
    assert cfg.model.kwargs == {"hidden": 64} and cfg.loss == {"mse": 1.0, "cos": 0.5}
    assert cfg.gates[0].min == 0.25 and cfg.split.ratios == (0.7, 0.2, 0.1)
    assert parse_override("a.b= x=y ") == (["a", "b"], "x=y")  # only the first '=' splits


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.ctxx=3", ["data.ctxx", "unknown field", "allowed in data", "ctx, stride"]),
        ("data.ctx=0", ["data.ctx", "greater than or equal to 1", "got 0"]),
        ("optim.lr=fast", ["optim.lr", "valid number", "'fast'"]),
        ("task=gan", ["task", "'lvm' or 'twotower'"]),
        ("early_stopping.mode=up", ["early_stopping.mode", "'max' or 'min'"]),
        ("gates=[{epoch: 1, metric: val_hit@5}]", ["gates.0", "needs a bound"]),
        (
            "gates=[{epoch: 1, metric: val_hit@5, min: 0.1, minn: 2}]",
            ["gates.0.minn", "allowed in gates", "epoch, metric, min, max"],
        ),
        ("data.min_ctx=9", ["data", "min_ctx=9 must be <= ctx=5"]),
        ("loss={}", ["loss", "empty"]),
        ("frobnicate=1", ["frobnicate", "allowed in the top level", "optim"]),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, expected):
    path = write_yaml(tmp_path / "c.yaml", {"bank": "b"})
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    msg = str(e.value)
    for part in expected:
        assert part in msg, (part, msg)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("nodots", "dotted.key=value"),
        ("=3", "dotted.key=value"),
        ("a..b=3", "dotted.key=value"),
        ("optim.lr=[1,", "not valid YAML"),
        ("gates.2.min=1", "gates has no items"),
        ("optim.lr.x=1", "optim.lr is a value"),
    ],
)
def test_malformed_overrides(tmp_path, override, expected):
    path = write_yaml(tmp_path / "c.yaml", {"bank": "b", "optim": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        load_config(path, [override])


def test_missing_file_and_bank(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="bank: required field is missing"):
        load_config(write_yaml(tmp_path / "c.yaml", {"seed": 1}))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_yaml(tmp_path / "l.yaml", [1, 2]))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(
        None, ["bank=b", "model.kwargs={hidden: 32, layers: 2}", "gates=[{epoch: 2, metric: m, max: 1}]"]
    )
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg and config_diff(cfg, again) == []
    changed = config_from_dict({**cfg.model_dump(mode="json"), "seed": 7})
    assert config_diff(cfg, changed) == ["seed"]
    assert config_diff(cfg, load_config(None, ["bank=b", "model.kwargs={hidden: 64, layers: 2}"])) == [
        "gates",
        "model.kwargs.hidden",
    ]


@pytest.mark.parametrize("name", [*MODEL_CONFIGS, "gru_infonce", "amn_contrastive"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, RunConfig) and cfg.bank == Path("banks/enwiki")
    assert cfg.data.ctx == 5
    if name in MODEL_CONFIGS:
        assert cfg.model.name == name


def test_shipped_model_configs_build():
    """Every shipped config's model and loss sections build (their keys are ones they accept)."""
    from lvmkit import models
    from lvmkit.losses import build_loss

    for name in [*MODEL_CONFIGS, "gru_infonce", "amn_contrastive"]:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        model = models.build_model(cfg.model.name, 16, delta=cfg.model.delta, **cfg.model.kwargs)
        assert models.count_parameters(model) > 0, name
        assert build_loss(cfg.loss, dim=16) is not None, name


def test_cli_reports_a_bad_value_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from lvmkit.cli.main import app

    res = CliRunner().invoke(
        app, ["train", "--out", str(tmp_path / "r"), "--set", "bank=b", "--set", "optim.lr=-1"]
    )
    assert res.exit_code == 2 and "optim.lr: Input should be greater than 0" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()  # nothing started
