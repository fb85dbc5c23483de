"""The `seer` command's quick subcommands, run in-process through `main()`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seer_core.checkpoint import save_state
from seer_core.config import load_config
from seer_core.training import build_train_state, state_dict
from services.cli import main
from services.storage import META_FILE


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "regnety_256gf", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "regnety_256gf" in out and "10444" in out and "tiny" in out
    assert main(["models", "vit"]) == 2
    assert "unknown trunk 'vit'" in capsys.readouterr().err


def test_config_list_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--list"]) == 0
    assert "seer-rg256" in capsys.readouterr().out
    assert main(["config", "--set", "train.batch_size=-1"]) == 2
    assert "train.batch_size: -1 is too small" in capsys.readouterr().err
    assert main(["config", "--config", "sslight-mobilenet"]) == 0
    assert "global_local_alpha: 0.4" in capsys.readouterr().out


def test_seed_writes_images_and_refuses_to_mix(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "imgs"
    assert main(["seed", "--out", str(out), "--count", "5"]) == 0
    assert len(list(out.iterdir())) == 5
    assert main(["seed", "--out", str(out), "--count", "5"]) == 1
    assert "--force" in capsys.readouterr().err


def _tiny_overrides(storage: Path) -> list[str]:
    return ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8",
            "model.prototypes=8", f"checkpoint.storage={storage}", "checkpoint.run_name=r1"]


def test_status_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = _tiny_overrides(tmp_path)
    args = [x for o in overrides for x in ("--set", o)]
    assert main(["status", *args]) == 1
    assert "no checkpoint yet for run 'r1'" in capsys.readouterr().out

    cfg = load_config("local", overrides)
    state = build_train_state(cfg)
    state.step, state.images_seen = 40, 640
    folder = tmp_path / "r1" / "step_000000000040"
    save_state(state_dict(state), folder / "state.pt")
    (folder / META_FILE).write_text(json.dumps({"step": 40, "images_seen": 640, "loss": 5.5,
                                                "lr": 0.25, "time": 0}))
    assert main(["status", *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 40 and summary["images_seen"] == 640 and summary["loss"] == 5.5
    assert summary["steps"] == [40]

    exported = tmp_path / "trunk.pt"
    assert main(["export", str(folder), str(exported)]) == 0
    weights = torch.load(exported, weights_only=True)
    assert weights and not any(k.startswith(("head", "module.", "fc.")) for k in weights)
