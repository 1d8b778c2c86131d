"""Hostile and unlucky inputs to the training engine: run names that leave RUNS_DIR, two trainers on one run,
config values of the wrong type, checkpoints whose weights or metadata cannot produce a number. Each case is one
clear line (or a refusal) and nothing already written is lost; every test takes seconds."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.cache.layout import CacheError
from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.data.clips import CachedClips
from vpn_head.engine import loop as engine
from vpn_head.engine.checkpoints import CheckpointError, load_checkpoint
from vpn_head.engine.config import FinetuneConfig, TrainConfig, check_run_name, check_types
from vpn_head.eval import evaluate
from vpn_head.train import finetune
from vpn_head.train import head as train


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_tiny_cache(tmp_path_factory.mktemp("cache") / "nucla")


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory):
    """A finished one-epoch head run ``tiny`` (its runs folder)."""
    runs = tmp_path_factory.mktemp("runs")
    train.train(tiny_config(tiny_cache, runs, epochs=1, variant="i3d", batch_size=6))
    return runs


def _args(cache, runs, *extra: str) -> list[str]:
    return ["--dataset", "nucla", "--protocol", "v3_12", "--variant", "i3d", "--epochs", "1", "--batch-size", "6",
            "--num-workers", "0", "--device", "cpu", "--cache-dir", str(cache), "--runs-dir", str(runs), *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", [".", "..", "../x", "a/b", "/abs", ".hidden", "-x", "a\nb", "x" * 201])
def test_a_run_name_that_is_not_one_folder_under_runs_dir_is_refused(name) -> None:
    with pytest.raises(ValueError, match="is not one folder under RUNS_DIR"):
        check_run_name(name)
    with pytest.raises(ValueError, match="is not one folder under RUNS_DIR"):
        TrainConfig("nucla", "v3_12", run_name=name).validate()
    with pytest.raises(ValueError, match="is not one folder under RUNS_DIR"):
        _ = FinetuneConfig("nucla", "v3_12", run_name=name).run_dir


@pytest.mark.parametrize("name", ["tiny", "vpn_1a2b3c4d_seed0", "ntu60_cs_vpn", "a.b-c+d=e,f@g"])
def test_ordinary_and_generated_run_names_are_accepted(name) -> None:
    assert check_run_name(name) == name


def test_run_dot_with_force_new_moves_nothing_aside(tiny_cache, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    (runs / "other").mkdir(parents=True)
    (runs / "other" / "config.json").write_text("{}")
    for name in (".", "..", "../x"):
        assert train.main(_args(tiny_cache, runs, "--run", name, "--force-new")) == 1
        assert "is not one folder under RUNS_DIR" in _one_line_error(capsys)
    assert sorted(p.name for p in runs.iterdir()) == ["other"] and not (tmp_path / "x").exists()
    assert evaluate.main(["--runs-dir", str(runs), "--run", "../x"]) == 1
    assert "is not one folder under RUNS_DIR" in _one_line_error(capsys)


# ---------------------------------------------------------------- the run lock


def test_a_second_trainer_of_the_same_run_exits_at_once(tiny_cache, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    with engine.RunLock(runs / "busy"):  # another `make train-head RUN=busy` is running
        assert train.main(_args(tiny_cache, runs, "--run", "busy")) == 1
        err = _one_line_error(capsys)
        assert "is being trained by pid" in err and "choose another RUN=" in err
        assert not (runs / "busy").exists()
        assert train.main(_args(tiny_cache, runs, "--run", "free")) == 0  # another run is not held up
    assert train.main(_args(tiny_cache, runs, "--run", "busy")) == 0  # released when the holder ends


def test_the_run_lock_is_held_through_force_new(tiny_cache, tmp_path) -> None:
    runs = tmp_path / "runs"
    config = tiny_config(tiny_cache, runs, epochs=1, variant="i3d", batch_size=6, run_name="r")
    train.train(config)
    seen = []
    real = engine.prepare_run_dir

    def prepare(*args, **kwargs):
        with pytest.raises(engine.RunBusyError):
            engine.RunLock(runs / "r").__enter__()
        seen.append(True)
        return real(*args, **kwargs)

    engine_prepare = train.engine.prepare_run_dir
    train.engine.prepare_run_dir = prepare
    try:
        train.train(config, force_new=True)
    finally:
        train.engine.prepare_run_dir = engine_prepare
    assert seen and len(list(runs.glob("r.replaced-*"))) == 1 and (runs / "r" / "last.pt").is_file()


# ---------------------------------------------------------------- config values of the wrong type


@pytest.mark.parametrize(("field", "value"), [
    ("amp", "false"), ("epochs", "3"), ("epochs", 2.0), ("lr", "0.1"), ("deterministic", 0), ("in_memory", "no"),
    ("seed", True), ("run_name", 5), ("model", "x"),
])
def test_a_replayed_value_of_the_wrong_type_is_one_line(tiny_cache, tmp_path, capsys, field, value) -> None:
    config = tiny_config(tiny_cache, tmp_path, epochs=1, variant="i3d", batch_size=6)
    recorded = {**config.to_dict(), field: value}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": recorded, "model": {}}))
    try:
        code = train.main(["--config", str(path)])
    except SystemExit as exit_info:  # argparse's own error for a field that is no object
        code = exit_info.code
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()  # nothing trained, nothing recorded


def test_typed_check_covers_every_field_and_the_augment_config() -> None:
    check_types(TrainConfig("nucla", "v3_12", amp=None, lr=1))  # an int is a float; None is allowed for amp
    with pytest.raises(ValueError, match=r"amp='false' \(needs bool or null\)"):
        TrainConfig("nucla", "v3_12", amp="false").validate()
    with pytest.raises(ValueError, match="flip_prob"):
        FinetuneConfig.from_dict({"dataset": "nucla", "protocol": "v3_12", "augment": {"flip_prob": "0.5"}}).validate()
    with pytest.raises(ValueError, match="unknown AugmentConfig field"):
        FinetuneConfig.from_dict({"dataset": "nucla", "protocol": "v3_12", "augment": {"flip": 0.5}})


def test_finetune_with_i3d_weights_that_do_not_exist_is_an_error(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"I3D_WEIGHTS {missing} does not exist"):
        FinetuneConfig("nucla", "v3_12", i3d_weights=str(missing)).validate()
    code = finetune.main(["--dataset", "nucla", "--protocol", "v3_12", "--i3d-weights", str(missing),
                          "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "c"),
                          "--device", "cpu"])
    assert code == 1 and "does not exist" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # the missing path is not recorded as if it had been used


# ---------------------------------------------------------------- checkpoints that cannot produce a number


def _tamper(path, change) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def test_eval_of_nan_weights_reports_no_number(trained, tiny_cache, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    (runs / "nan").mkdir(parents=True)
    for name in ("best.pt", "config.json"):
        (runs / "nan" / name).write_bytes((trained / "tiny" / name).read_bytes())
    _tamper(runs / "nan" / "best.pt", lambda c: c["model"][next(iter(c["model"]))].fill_(float("nan")))
    code = evaluate.main(["--runs-dir", str(runs), "--run", "nan", "--cache-dir", str(tiny_cache)])
    err = _one_line_error(capsys)
    assert code == 1 and str(runs / "nan" / "best.pt") in err and "NaN or infinite" in err
    assert not (runs / "nan" / "eval_test").exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(epoch="3"), "is not a count of epochs"),
    (lambda c: c.update(train_config=[1, 2]), "train_config is a list"),
    (lambda c: c["train_config"].update(cache=5), r"train_config: value\(s\) of the wrong type: cache=5"),
    (lambda c: c.update(model={"w": [1.0]}), "model is not a state dict of tensors"),
    (lambda c: c["model"][next(iter(c["model"]))].fill_(float("inf")), "NaN or infinite"),
    (lambda c: c.update(progress=[]), "progress is not an object"),
    (lambda c: c["progress"].update(best_epoch=9), "do not fit its history"),
])
def test_checkpoint_metadata_is_checked_past_its_top_level_keys(trained, tmp_path, change, message) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes((trained / "tiny" / "last.pt").read_bytes())
    _tamper(path, change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_resume_from_a_nan_last_pt_is_refused_and_keeps_the_file(trained, tiny_cache, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    (runs / "tiny").mkdir(parents=True)
    for name in ("last.pt", "config.json"):
        (runs / "tiny" / name).write_bytes((trained / "tiny" / name).read_bytes())
    _tamper(runs / "tiny" / "last.pt", lambda c: c["model"][next(iter(c["model"]))].fill_(float("nan")))
    before = (runs / "tiny" / "last.pt").read_bytes()
    argv = ["--config", str(runs / "tiny" / "config.json"), "--runs-dir", str(runs), "--epochs", "2"]
    assert train.main(argv) == 1
    assert "NaN or infinite" in _one_line_error(capsys)
    assert (runs / "tiny" / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- a cache built for another protocol


def test_a_cache_built_for_one_protocol_is_refused_for_another(tmp_path) -> None:
    cache = write_tiny_cache(tmp_path / "ntu", dataset="ntu60", built_protocol="cv")
    assert len(CachedClips(cache, "cv", "train", dataset="ntu60")) > 0
    with pytest.raises(CacheError, match=r"built for ntu60 protocol 'cv' only .* PROTOCOL=cs"):
        CachedClips(cache, "cs", "train", dataset="ntu60")
    every = write_tiny_cache(tmp_path / "all", dataset="ntu60")  # PROTOCOL= empty: every sample, any protocol
    assert len(CachedClips(every, "cs", "train", dataset="ntu60")) > 0
