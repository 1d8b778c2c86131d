"""Checkpoints name their kind; one loader reads both kinds, and infers the kind of checkpoints written before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.i3d.model import InceptionI3d
from vpn_head.engine.checkpoints import (
    CHECKPOINT_FORMAT,
    FINETUNE,
    HEAD,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    model_state,
    save_checkpoint,
)
from vpn_head.model.config import VPNConfig
from vpn_head.model.finetune_vpn import FinetuneVPN
from vpn_head.model.vpn import VPN

TINY = {"embed_dim": 16, "attention_hidden": 16, "gcn_channels": 8}


def _head() -> VPN:
    torch.manual_seed(0)
    return VPN(VPNConfig.for_dataset("nucla", "v3_12", **TINY))


def _entries(model: VPN | FinetuneVPN) -> dict:
    return dict(epoch=2, **model_state(model), train_config={"dataset": "nucla"}, vpn_config=model.config.to_dict())


def test_save_writes_the_kind_and_the_loader_rebuilds_the_model(tmp_path):
    head = _head()
    save_checkpoint(tmp_path / "best.pt", HEAD, **_entries(head))
    ckpt = load_checkpoint(tmp_path / "best.pt", HEAD)
    assert ckpt["kind"] == HEAD
    rebuilt = model_from_checkpoint(ckpt, tmp_path / "best.pt")
    assert type(rebuilt) is VPN
    for name, tensor in head.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", "trunk", **_entries(head))


def test_checkpoints_without_a_kind_get_it_from_their_keys(tmp_path):
    head = _head()
    torch.save({"format": CHECKPOINT_FORMAT, **_entries(head)}, tmp_path / "old_head.pt")
    ckpt = load_checkpoint(tmp_path / "old_head.pt")
    assert ckpt["kind"] == HEAD and type(model_from_checkpoint(ckpt, tmp_path / "old_head.pt")) is VPN

    model = FinetuneVPN(InceptionI3d(), head)
    torch.save({"format": CHECKPOINT_FORMAT, **_entries(model)}, tmp_path / "old_finetune.pt")
    ckpt = load_checkpoint(tmp_path / "old_finetune.pt", FINETUNE)
    assert ckpt["kind"] == FINETUNE
    rebuilt = model_from_checkpoint(ckpt, tmp_path / "old_finetune.pt")
    assert isinstance(rebuilt, FinetuneVPN)
    torch.testing.assert_close(rebuilt.i3d.state_dict(), model.i3d.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.head.state_dict(), head.state_dict(), rtol=0, atol=0)


def test_the_loader_refuses_the_wrong_kind_and_inconsistent_checkpoints(tmp_path):
    head = _head()
    save_checkpoint(tmp_path / "head.pt", HEAD, **_entries(head))
    with pytest.raises(CheckpointError, match="is a head checkpoint, not a finetune one"):
        load_checkpoint(tmp_path / "head.pt", FINETUNE)
    save_checkpoint(tmp_path / "no_i3d.pt", FINETUNE, **_entries(head))
    with pytest.raises(CheckpointError, match="holds no I3D weights"):
        load_checkpoint(tmp_path / "no_i3d.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "trunk", **_entries(head)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint kind 'trunk'"):
        load_checkpoint(tmp_path / "odd.pt")


def test_checkpoint_path_takes_only_known_names():
    assert checkpoint_path("runs/x", "last") == Path("runs/x/last.pt")
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        checkpoint_path("runs/x", "final")
