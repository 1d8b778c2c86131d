"""``CONFIG=runs/<name>/config.json``: a recorded head or fine-tune run is repeated; command-line values win."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.data.augment import AugmentConfig
from vpn_head.eval.evaluate import load_checkpoint
from vpn_head.train import finetune
from vpn_head.train import head as train


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache") / "nucla")


def test_a_head_run_repeated_from_its_config_gives_the_same_weights(tiny_cache, tmp_path):
    train.train(tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d", lr=0.03, seed=4, batch_size=6))
    recorded = tmp_path / "tiny" / "config.json"
    assert train.main(["--config", str(recorded), "--run", "again"]) == 0
    first, again = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("tiny", "again"))
    assert again["train"] == {**first["train"], "run_name": "again"} and again["model"] == first["model"]
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("tiny", "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_command_line_values_override_the_file(tiny_cache, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train, "train", lambda config, force_new: seen.append(config) or {
        "run": "", "epochs_done": 0, "best_epoch": 0, "best": {}})
    config = tiny_config(tiny_cache, tmp_path, variant="attention", model={"embed_dim": 16, "coupler": False})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": config.to_dict(), "model": {}}))
    assert train.main(["--config", str(path), "--lr", "0.2", "--model", "dropout=0.1", "--no-coupler"]) == 0
    assert seen[0] == replace(config, lr=0.2, model={"embed_dim": 16, "coupler": False, "dropout": 0.1})
    assert train.main(["--config", str(path)]) == 0 and seen[1] == config


def test_a_finetune_config_is_replayed_field_by_field(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(finetune, "finetune", lambda config, force_new: seen.append(config) or {})
    config = finetune.FinetuneConfig(
        dataset="ntu60", protocol="cv", epochs=3, per_gpu_batch=2, lr=0.002, freeze_until="Mixed_3c",
        frozen_bn=True, clip_len=32, crop_size=160, augment=AugmentConfig(0.0, False, 0.2, 0.05), variant="attention",
        model={"embed_dim": 64}, eval_clips=2, manifest="m.csv", data_root="/data", cache="c", runs_dir="r",
        run_name="ft", init="runs/head", i3d_weights="w.pt", device="cpu")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"finetune": config.to_dict(), "model": {}}))
    assert finetune.main(["--config", str(path)]) == 0
    assert seen[0] == config
    assert finetune.main(["--config", str(path), "--epochs", "5", "--box-scale", "0.3"]) == 0
    assert seen[1] == replace(config, epochs=5, augment=replace(config.augment, box_scale=0.3))


def test_a_file_that_is_no_run_config_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text(json.dumps({"finetune": {}}))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "not a train run's config.json" in capsys.readouterr().err
