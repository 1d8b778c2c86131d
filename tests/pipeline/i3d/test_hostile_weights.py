"""I3D weights that cannot produce a number (NaN or inf in a tensor) are refused where they are loaded, naming the
file, before a cache build turns every sample into a failure row."""

from __future__ import annotations

import pytest
import torch

from pipeline.i3d.model import I3DConfig, InceptionI3d, load_i3d, load_weights, nonfinite_tensors


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return InceptionI3d(I3DConfig()).state_dict()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_weights_with_a_non_finite_value_are_refused_naming_the_file(state, tmp_path, value) -> None:
    bad = {k: v.clone() for k, v in state.items()}
    name = "Mixed_4b.b0.conv3d.weight" if "Mixed_4b.b0.conv3d.weight" in bad else next(iter(bad))
    bad[name].view(-1)[3] = value
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=rf"I3D weights {path} hold NaN or infinite values in {name} \(1 of "):
        load_i3d(path)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_weights(InceptionI3d(I3DConfig()), path)


def test_finite_weights_load_and_report_nothing(state, tmp_path) -> None:
    assert nonfinite_tensors(state) == ""
    torch.save(state, tmp_path / "ok.pt")
    assert not load_i3d(tmp_path / "ok.pt").training


def test_a_fine_tune_checkpoint_with_nan_i3d_weights_is_refused(state, tmp_path) -> None:
    bad = {k: v.clone() for k, v in state.items()}
    next(v for v in bad.values() if v.is_floating_point()).fill_(float("nan"))
    path = tmp_path / "best.pt"
    torch.save({"kind": "finetune", "i3d": bad}, path)
    with pytest.raises(ValueError, match=f"I3D weights {path} hold NaN"):
        load_i3d(path)
