"""The head recipe against a linear probe (issue 18): feature standardisation, the optimizer choice, the probe
itself, and the oracle head trained through the one engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import SMALL_MODEL, tiny_config, write_tiny_cache
from vpn_head.data.splits import CARVED_VAL
from vpn_head.engine.loop import relative_gradients
from vpn_head.eval import diagnostics as diag
from vpn_head.eval.probe import main as probe_main
from vpn_head.eval.probe import run_probe
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN, PooledNorm
from vpn_head.train.head import TrainConfig, make_optimizer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _offset_features(c, sample_id, k, rng):
    """A large shared non-negative level and a small class signal: the shape of pooled Mixed_5c features."""
    features = 50.0 + rng.normal(0.0, 1.0, (1024, 8, 7, 7)).astype(np.float32)
    features[16 * c:16 * (c + 1)] += 0.5
    return features


@pytest.fixture(scope="module")
def offset_cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("offset") / "cache", feature_fn=_offset_features,
                            videos={"train": 10, "test": 3})


def test_pooled_norm_standardises_and_survives_a_batch_of_one():
    norm = PooledNorm(3)
    x = torch.tensor([[100.0, 1.0, -5.0], [102.0, 3.0, -7.0], [104.0, 5.0, -9.0]])
    y = norm(x)
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5) and torch.allclose(y.std(0, unbiased=False),
                                                                                      torch.ones(3), atol=1e-3)
    assert torch.allclose(norm.running_mean, x.mean(0)) and torch.allclose(norm.running_var, x.var(0))  # first batch
    single = norm(x[:1])  # training mode, one row: the running statistics, no error
    assert single.shape == (1, 3) and torch.isfinite(single).all()
    assert not any(p.requires_grad for p in norm.parameters())  # no affine: the classifier carries scale/shift


@pytest.mark.parametrize("variant", ["i3d", "attention", "vpn"])
def test_feature_norm_head_trains_every_parameter(variant):
    config = VPNConfig.for_dataset("ntu60", "cs", variant=variant, feature_norm="batch", **SMALL_MODEL)
    model = VPN(config).train()
    out = model(torch.rand(4, 1024, 8, 7, 7), torch.randn(4, 2, 3, 25, 20))
    loss = out.logits.logsumexp(1).sum()
    if out.f_e is not None:
        loss = loss + (out.f_e * out.p_e).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing
    assert isinstance(model.feature_norm, PooledNorm)
    plain = VPNConfig.for_dataset("ntu60", "cs", variant=variant, feature_norm="none")
    assert isinstance(VPN(plain).feature_norm, torch.nn.Identity)


def test_bad_recipe_values_are_refused():
    with pytest.raises(ValueError, match="feature_norm"):
        VPNConfig.for_dataset("ntu60", "cs", feature_norm="layer")
    with pytest.raises(ValueError, match="optimizer='adam'"):
        TrainConfig("ntu60", "cs", optimizer="adam").validate()


def test_make_optimizer_follows_the_config():
    model = VPN(VPNConfig.for_dataset("ntu60", "cs", variant="attention", **SMALL_MODEL))
    sgd = make_optimizer(TrainConfig("ntu60", "cs", variant="attention", pose_lr_scale=10.0), model)
    assert isinstance(sgd, torch.optim.SGD) and [g["lr"] for g in sgd.param_groups] == [0.01, pytest.approx(0.1)]
    adamw = make_optimizer(TrainConfig("ntu60", "cs", variant="attention", optimizer="adamw", lr=1e-3,
                                       weight_decay=0.05), model)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05


def test_standardised_head_learns_what_the_paper_head_misses(offset_cache, tmp_path):
    """On features with a large shared level, SGD at the paper's rate barely moves the plain head; the standardised
    head separates the classes (the failure issue 18 measured on real Mixed_5c features, in miniature)."""
    common = dict(variant="i3d", model={"feature_norm": "none"}, epochs=4, batch_size=8, lr=0.01, eval_split="test")
    plain = train(tiny_config(offset_cache, tmp_path, run_name="plain", **common))
    normed = train(tiny_config(offset_cache, tmp_path, run_name="normed", **{**common,
                                                                          "model": {"feature_norm": "batch"}}))
    assert normed["best"]["top1"] == 1.0
    assert plain["best"]["top1"] <= 0.5


def test_adamw_run_resumes_bit_identically(offset_cache, tmp_path):
    common = dict(variant="i3d", model={"feature_norm": "batch"}, batch_size=8, optimizer="adamw", lr=1e-3,
                  weight_decay=0.05)
    whole = train(tiny_config(offset_cache, tmp_path, run_name="whole", epochs=3, **common))
    train(tiny_config(offset_cache, tmp_path, run_name="parts", epochs=1, **common))
    parts = train(tiny_config(offset_cache, tmp_path, run_name="parts", epochs=3, **common))
    assert whole["best"] == parts["best"] and whole["last"] == parts["last"]
    log = (tmp_path / "parts" / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2", "3"]


def test_probe_chooses_c_on_validation_and_scores_test_once(offset_cache, tmp_path, capsys):
    result = run_probe(offset_cache, "nucla", "v3_12", seed=0)
    assert result["checkpoint_selected_on"] == CARVED_VAL and result["variant"] == "probe"
    assert result["top1"] == 1.0 and result["num_videos"] == 12  # 4 classes x 3 test videos, separable
    assert set(result["per_c"]) == {"0.001", "0.01", "0.1", "1.0", "10.0"}
    best = max(result["per_c"].values())
    assert result["per_c"][str(result["C"])] == best  # the first C with the best validation score
    with pytest.raises(ValueError, match="never chosen on the test split"):
        run_probe(offset_cache, "nucla", "v3_12", eval_split="test")
    assert probe_main(["--dataset", "nucla", "--protocol", "v3_12", "--cache-dir", str(offset_cache),
                       "--runs-dir", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["top1"] == 1.0 and (tmp_path / "probe_nucla_v3_12_seed0.json").is_file()
    assert probe_main(["--dataset", "nucla", "--protocol", "v3_12", "--cache-dir", str(tmp_path / "none")]) == 2
    assert "no cache" in capsys.readouterr().err


def test_oracle_head_output_and_gradient():
    config = VPNConfig.for_dataset("nucla", "v3_12", variant="attention", temporal_scale="mean1",
                                   feature_norm="batch")
    head = diag.OracleAttentionHead(config)
    maps = torch.from_numpy(diag.oracle_maps(np.array([[3, 4], [1, 1]]), 7))
    out = head.train()(torch.rand(2, 1024, 8, 7, 7), maps)
    assert out.logits.shape == (2, 10) and out.attention_spatial is maps and out.f_e is None
    out.logits.sum().backward()
    assert relative_gradients(head, ("classifier",))["classifier"] > 0


def test_oracle_trains_through_the_engine_and_a_rerun_resumes(offset_cache, tmp_path, monkeypatch):
    """The oracle run is an engine run: config.json, best/last.pt, train_log.csv; a rerun trains nothing."""
    from vpn_head.experiments import fidelity

    def fixed_cells(cache_path, rows, sample_ids, poses, spec, manifest, data_root, grid):
        return np.tile([[3, 3]], (len(rows), 1)), "fixed"

    monkeypatch.setattr(diag, "clip_joint_cells", fixed_cells)
    runs = tmp_path / "runs"
    first = fidelity.train_oracle(str(offset_cache), 0, 2, "unused.csv", None, "nucla", "v3_12",
                                  model={"feature_norm": "batch"}, runs_dir=str(runs))
    run_dir = runs / first["run"]
    assert first["run"].startswith("oracle_") and first["checkpoint_selected_on"] == CARVED_VAL
    assert {"config.json", "best.pt", "last.pt", "train_log.csv", "metrics.json"} <= {p.name for p in
                                                                                      run_dir.iterdir()}
    log = (run_dir / "train_log.csv").read_text()
    again = fidelity.train_oracle(str(offset_cache), 0, 2, "unused.csv", None, "nucla", "v3_12",
                                  model={"feature_norm": "batch"}, runs_dir=str(runs))
    assert again == first and (run_dir / "train_log.csv").read_text() == log


def test_standardised_pool_is_the_default_and_old_saved_configs_keep_their_classifier(tmp_path):
    """feature_norm=batch is the default (the paper's reading is PAPER_READING); a config saved before the field
    existed had no standardisation, so it reloads as it was and its checkpoint loads strictly."""
    from vpn_head.engine.checkpoints import HEAD, load_checkpoint, model_from_checkpoint, save_checkpoint
    from vpn_head.model.config import PAPER_READING

    assert VPNConfig.for_dataset("ntu60", "cs").feature_norm == "batch" and PAPER_READING["feature_norm"] == "none"
    old = VPNConfig.for_dataset("ntu60", "cs", variant="i3d", feature_norm="none")
    saved = {k: v for k, v in old.to_dict().items() if k != "feature_norm"}  # as written before the field existed
    assert VPNConfig.from_saved(saved).feature_norm == "none" and VPNConfig.from_dict(saved).feature_norm == "batch"
    path = tmp_path / "old.pt"
    save_checkpoint(path, HEAD, epoch=1, model=VPN(old).state_dict(), vpn_config=saved, train_config={})
    model = model_from_checkpoint(load_checkpoint(path), path)
    assert isinstance(model.feature_norm, torch.nn.Identity)
