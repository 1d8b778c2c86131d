"""bench/gpu_check.py at smoke size on the CPU: every section runs and the JSON has the documented fields."""

from __future__ import annotations

import json

import pytest

from bench import gpu_check


@pytest.mark.slow
def test_smoke_run_reports_every_section(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(out.read_text())
    assert printed == report and report["smoke"] and report["errors"] == {}
    assert set(gpu_check.SECTIONS) - {"compile"} | {"total"} == set(report["seconds"])  # compile: CUDA only
    runs = report["i3d"]["runs"]
    assert {(r["precision"], r["channels_last"]) for r in runs} == {(p, c) for p in ("fp32", "bf16")
                                                                     for c in (True, False)}
    assert all(r["clips_per_s"] > 0 for r in runs)
    diff = report["i3d"]["bf16_vs_fp32"]
    assert 0 < diff["max_abs_diff"] < diff["max_abs_fp32"]  # bf16 rounds, but stays far below the signal
    pipeline = report["pipeline"]
    assert pipeline["videos"]["total"] == pipeline["videos"]["synthetic"] + pipeline["videos"]["real_copies"] >= 1
    assert all(v["pipeline_videos_per_s"] > 0 and v["pipeline_over_slowest"] > 0
               for v in pipeline["by_decode_workers"].values())
    assert report["head"]["i3d_samples_per_s"] > 0 and report["head"]["vpn_samples_per_s"] > 0
    assert report["finetune"]["fp32"]["clips_per_s"] > 0 and report["finetune"]["bf16"]["clips_per_s"] > 0
    ddp = report["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["steps"] == 2
    assert ddp["parameters_updated"] > ddp["parameters"] // 2  # a few get zero gradients at batch 1 on 1x2x2 maps
