"""CachedClips, the head trainer (resume, errors) and the ablation runner, on tiny caches built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cache.reader import CacheError
from pipeline.datasets.registry import get_dataset, protocol_label
from tests.helpers import tiny_config, tiny_sample_id, write_tiny_cache
from vpn_head.data.clips import CachedClips, EmptySplitError, resolve_cache, video_groups
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import CheckpointError, load_checkpoint
from vpn_head.engine.loop import RunConfigError
from vpn_head.experiments.ablate import ABLATIONS, ablate
from vpn_head.train.head import LOG_COLUMNS, TrainConfig, main, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("cache") / "nucla")


# ----------------------------------------------------------------------------------------------------------
# data


def test_cached_clips_reads_split_with_protocol_labels(tiny_cache):
    clips = CachedClips(tiny_cache, "v3_12", "test")
    assert len(clips) == 4 * 2 * 2
    features, poses, label, row = clips[3]
    assert features.dtype == torch.float32 and features.shape == (1024, 8, 7, 7)
    assert poses.shape == (2, 3, 20, 5)
    assert clips.sample_ids[3] == tiny_sample_id("nucla", "test", 0, 1) and label == 0
    # the separable signal survives float16 storage
    assert features[:16].mean() > 1.5 and features[16:].mean().abs() < 0.1
    assert row == 24 + 3  # train rows come first in the cache
    assert clips.sample_ids_of(np.array([row, 24])).tolist() == [tiny_sample_id("nucla", "test", 0, v) for v in (1, 0)]


def test_cached_clips_drops_classes_outside_the_protocol(tmp_path):
    spec = get_dataset("smarthome")
    outside = spec.classes.index("Cook.Cut")  # not one of the 19 cross-view classes
    inside = spec.classes.index("Walk")
    cache = write_tiny_cache(tmp_path / "sh", "smarthome", (outside, inside), {"train": 2}, {"train": 1})
    cs = CachedClips(cache, "cs", "train")
    cv = CachedClips(cache, "cv1", "train")
    assert len(cs) == 4 and len(cv) == 2
    assert set(cv.labels) == {protocol_label(spec, "cv1", "Walk")} == {18}
    assert set(cs.labels) == {outside, inside}
    with pytest.raises(EmptySplitError, match="'test' of smarthome/cv1 is empty"):
        CachedClips(cache, "cv1", "test")


def test_in_memory_and_worker_reads_match_disk(tiny_cache):
    disk = CachedClips(tiny_cache, "v3_12", "train")
    memory = CachedClips(tiny_cache, "v3_12", "train", in_memory=True)
    assert memory.in_memory and not disk.in_memory
    for i in (0, 5, len(disk) - 1):
        assert torch.equal(disk[i][0], memory[i][0]) and torch.equal(disk[i][1], memory[i][1])
    loader = torch.utils.data.DataLoader(disk, batch_size=5, num_workers=2)
    rows = torch.cat([batch[3] for batch in loader])
    assert rows.tolist() == disk.rows.tolist()  # each worker opened its own handle and read every row


def test_in_memory_falls_back_to_disk_when_ram_is_short(tiny_cache, monkeypatch, caplog):
    monkeypatch.setattr("vpn_head.data.clips.available_memory_bytes", lambda: 10 * 2**20)
    clips = CachedClips(tiny_cache, "v3_12", "train", in_memory=True)
    assert not clips.in_memory
    assert "only 0.01 GiB RAM is available; reading from disk instead" in caplog.text
    assert clips[0][0].shape == (1024, 8, 7, 7)


def test_float16_items_are_the_stored_values(tiny_cache):
    full = CachedClips(tiny_cache, "v3_12", "train")
    half = CachedClips(tiny_cache, "v3_12", "train", feature_dtype=torch.float16)
    assert half[2][0].dtype == torch.float16 and torch.equal(half[2][0].float(), full[2][0])


def test_cached_clips_errors(tiny_cache, tmp_path):
    with pytest.raises(CacheError, match="does not exist|no cache"):
        CachedClips(tmp_path / "nowhere.h5", "v3_12", "train")
    with pytest.raises(CacheError, match="no protocol 'cs'"):
        CachedClips(tiny_cache, "cs", "train")
    with pytest.raises(CacheError, match="unknown split"):
        CachedClips(tiny_cache, "v3_12", "training")
    with pytest.raises(EmptySplitError, match="'val'"):
        CachedClips(tiny_cache, "v3_12", "val")
    with pytest.raises(CacheError, match="not 'ntu60'"):
        CachedClips(tiny_cache, "v3_12", "train", dataset="ntu60")


def test_resolve_cache(tiny_cache, tmp_path):
    assert resolve_cache(tiny_cache, "nucla") == tiny_cache
    root = tmp_path / "root"
    (root / "nucla" / "abc123").mkdir(parents=True)
    (root / "nucla" / "abc123" / "cache.h5").write_bytes(b"")
    assert resolve_cache(root, "nucla") == root / "nucla" / "abc123"
    (root / "nucla" / "def456").mkdir()
    (root / "nucla" / "def456" / "cache.h5").write_bytes(b"")
    with pytest.raises(CacheError, match="several caches"):
        resolve_cache(root, "nucla")
    with pytest.raises(CacheError, match="no cache"):
        resolve_cache(root, "ntu60")


def test_video_groups_numbers_videos_in_order_of_appearance():
    groups, ids = video_groups(np.array(["b", "b", "a", "c", "c", "c"]))
    assert groups.tolist() == [0, 0, 1, 2, 2, 2]
    assert ids.tolist() == ["b", "a", "c"]


# ----------------------------------------------------------------------------------------------------------
# training


def test_training_learns_a_separable_cache_and_writes_the_run(tiny_cache, tmp_path):
    summary = train(tiny_config(tiny_cache, tmp_path, epochs=3))
    run = tmp_path / "tiny"
    assert summary["complete"] and summary["epochs_done"] == 3
    assert summary["best"]["top1"] >= 0.99 and summary["best"]["mean_class"] >= 0.99
    assert {p.name for p in run.iterdir()} >= {"last.pt", "best.pt", "config.json", "metrics.json", "train_log.csv"}
    log_lines = (run / "train_log.csv").read_text().splitlines()
    assert log_lines[0].split(",") == list(LOG_COLUMNS) and len(log_lines) == 4
    assert json.loads((run / "config.json").read_text())["model"]["embed_dim"] == 16
    assert load_checkpoint(run / "best.pt")["epoch"] == summary["best_epoch"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_cache, tmp_path):
    straight = train(tiny_config(tiny_cache, tmp_path / "a", epochs=3))
    train(tiny_config(tiny_cache, tmp_path / "b", epochs=1))  # "killed" after epoch 1
    resumed = train(tiny_config(tiny_cache, tmp_path / "b", epochs=3))
    a = load_checkpoint(tmp_path / "a" / "tiny" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "tiny" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["best"] == straight["best"]
    logs = [(tmp_path / r / "tiny" / "train_log.csv").read_text().splitlines() for r in ("a", "b")]
    loss_columns = slice(0, LOG_COLUMNS.index("epoch_time_s"))
    assert [line.split(",")[loss_columns] for line in logs[0]] == [line.split(",")[loss_columns] for line in logs[1]]
    # a finished run is left alone
    mtime = (tmp_path / "b" / "tiny" / "last.pt").stat().st_mtime_ns
    assert train(tiny_config(tiny_cache, tmp_path / "b", epochs=3))["epochs_done"] == 3
    assert (tmp_path / "b" / "tiny" / "last.pt").stat().st_mtime_ns == mtime


def test_another_seed_gives_other_weights(tiny_cache, tmp_path):
    """Guards the resume test: identical weights must not come from training that ignores its inputs."""
    train(tiny_config(tiny_cache, tmp_path / "a", epochs=1, variant="i3d"))
    train(tiny_config(tiny_cache, tmp_path / "b", epochs=1, variant="i3d", seed=1))
    a = load_checkpoint(tmp_path / "a" / "tiny" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "tiny" / "last.pt")["model"]
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_changed_experiment_is_refused_unless_forced(tiny_cache, tmp_path):
    train(tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d"))
    with pytest.raises(RunConfigError, match=r"lr: saved 0.05, requested 0.1.*--force-new"):
        train(tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d", lr=0.1))
    with pytest.raises(RunConfigError, match="model.variant"):
        train(tiny_config(tiny_cache, tmp_path, epochs=1, variant="attention"))
    summary = train(tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d", lr=0.1), force_new=True)
    assert summary["epochs_done"] == 1
    assert len(list(tmp_path.glob("tiny.replaced-*"))) == 1
    saved = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert saved["train"]["lr"] == 0.1


def test_corrupt_checkpoint_is_named_in_the_error(tiny_cache, tmp_path):
    config = tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d")
    train(config)
    last = tmp_path / "tiny" / "last.pt"
    last.write_bytes(b"\x00garbage, not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=f"{last}.*not a readable checkpoint"):
        train(TrainConfig(**{**config.to_dict(), "epochs": 2}))
    torch.save({"weights": 1}, last)
    with pytest.raises(CheckpointError, match="not a vpn_head.checkpoint"):
        train(TrainConfig(**{**config.to_dict(), "epochs": 2}))


def test_bad_inputs_give_clear_errors(tiny_cache, tmp_path):
    with pytest.raises(CacheError, match="no cache"):
        train(tiny_config(tmp_path / "missing", tmp_path))
    with pytest.raises(ValueError, match="no protocol 'cs'"):
        train(tiny_config(tiny_cache, tmp_path, protocol="cs"))
    with pytest.raises(ValueError, match=r"epochs=0.*lr=-1"):
        train(tiny_config(tiny_cache, tmp_path, epochs=0, lr=-1.0))
    with pytest.raises(ValueError, match="unknown VPNConfig field"):
        train(tiny_config(tiny_cache, tmp_path, model={"no_such_field": 1}))
    with pytest.raises(EmptySplitError, match="'val'"):
        train(tiny_config(tiny_cache, tmp_path, eval_split="val"))


def test_non_finite_loss_stops_training_naming_the_batch(tmp_path, monkeypatch):
    folder = write_tiny_cache(tmp_path / "nucla")
    real_loss = engine.vpn_loss

    def nan_loss(out, labels, config):
        losses = real_loss(out, labels, config)
        return {**losses, "total": losses["total"] * float("nan")}

    monkeypatch.setattr(engine, "vpn_loss", nan_loss)  # the loss the engine's epoch calls
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite loss nan at step 0 .*a\d\d_s\d\d_e\d\d_v\d\d"):
        train(tiny_config(folder, tmp_path / "runs", epochs=1))
    assert not (tmp_path / "runs" / "tiny" / "metrics.json").exists()


def test_cli_exits_non_zero_with_one_line(tmp_path, capsys):
    code = main(["--dataset", "nucla", "--protocol", "v3_12", "--cache-dir", str(tmp_path / "missing"),
                 "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: no cache at") and "\n" not in err


# ----------------------------------------------------------------------------------------------------------
# ablation


def test_ablation_writes_every_row_and_skips_finished_runs(tiny_cache, tmp_path):
    base = tiny_config(tiny_cache, tmp_path / "ablate", epochs=1, run_name="", batch_size=12)
    out = ablate(base)
    text = out.read_text()
    for ablation in ABLATIONS:
        escaped = ablation.row.replace("|", "\\|")  # a bare | would split the markdown cell
        assert f"| {escaped} | {ablation.run} |" in text
    runs = {p.name for p in (tmp_path / "ablate").iterdir() if p.is_dir()}
    assert runs == {a.run for a in ABLATIONS}
    assert "## Table 1" in text and "## Table 3" in text and "## Readings" in text
    assert all(line.count("|") - line.count("\\|") == 6 for line in text.splitlines() if line.startswith("| "))
    i3d_row = next(line for line in text.splitlines() if line.startswith("| I3D (no pose) |"))
    assert i3d_row.endswith("| - |") and "Shuffled poses" in text
    assert all((tmp_path / "ablate" / run / "eval_test" / "metrics.json").exists() for run in runs)
    stamps = {run: (tmp_path / "ablate" / run / "last.pt").stat().st_mtime_ns for run in runs}
    assert ablate(base).read_text() == text
    assert stamps == {run: (tmp_path / "ablate" / run / "last.pt").stat().st_mtime_ns for run in runs}
