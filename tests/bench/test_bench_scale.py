"""bench/bench_scale.py: the NTU-120 id space, the slope fit, and a whole run at tiny sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import bench_scale
from pipeline.datasets.ntu import in_dataset, parse_sample_id, read_missing_list
from tests.conftest import shared_path


def test_ntu120_ids_cover_the_real_id_space_and_the_official_missing_list():
    missing = read_missing_list(shared_path("samples", "lists", "NTU_RGBD120_samples_with_missing_skeletons.txt"))
    ids = bench_scale.ntu120_ids(missing)
    assert len(ids) == len(set(ids)) == bench_scale.NTU120_VIDEOS == 114_480
    assert missing <= set(ids) and len(missing) == 535
    parsed = [parse_sample_id(i) for i in ids]
    assert all(in_dataset(p, "ntu120") and p.camera in (1, 2, 3) and p.replication in (1, 2) for p in parsed)
    old = [p for p in parsed if p.setup <= 17]
    assert len(old) == bench_scale.NTU60_VIDEOS and all(p.action <= 60 for p in old)
    assert all(p.action > 60 for p in parsed if p.setup > 17)
    assert ids == bench_scale.ntu120_ids(missing)  # seeded


def test_fit_slope_recovers_a_power_law():
    ns = [10, 100, 1000]
    slope, a = bench_scale.fit_slope(ns, [3e-4 * n ** 1.5 for n in ns])
    assert slope == pytest.approx(1.5) and a == pytest.approx(3e-4)


@pytest.mark.slow
def test_a_tiny_run_writes_every_table_and_the_plot(tmp_path):
    out = tmp_path / "results" / "scale.json"
    assert bench_scale.main(["--out", str(out), "--sizes", "40", "200", "--shard-size", "20", "--read-clips", "24",
                             "--read-shards", "1", "6", "--read-workers", "0", "2", "--latest-caches", "2", "5",
                             "--work-dir", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert [r["rows"] for r in result["manifest"]] == [40, 200]
    for group in ("luigi_local", "luigi_luigid"):
        rows = result[group]
        assert [r["shards"] for r in rows] == [math.ceil(n / 20) for n in (40, 200)]
        assert all(r["per_task_overhead_s"] > 0 and 0 < r["first_shard_s"] < r["wall_s"] for r in rows)
    assert [r["shards"] for r in result["merge"]] == [2, 10]
    assert all(r["fds_after_reads"] >= r["shards"] for r in result["merge"])  # a view keeps its shards open
    reads = {(r["shards"], r["workers"]): r for r in result["reads"]}
    assert set(reads) == {(1, 0), (1, 2), (6, 0), (6, 2)}
    assert all(r["samples"] == 24 and r["samples_per_s"] > 0 for r in reads.values())
    assert reads[(6, 0)]["fds_main"] > reads[(1, 0)]["fds_main"] and reads[(6, 2)]["fds_per_worker"] > 0
    stages = {row["stage"]: row for row in result["scaling"]}
    assert {"manifest scan", "luigi local: overhead of the whole build", "merge into cache.h5",
            "failures.csv: read"} <= set(stages)
    scan = stages["manifest scan"]
    assert scan["at_114480"]["extrapolated"] and np.isfinite(scan["slope"])
    assert scan["at_114480"]["seconds"] == pytest.approx(
        scan["seconds"]["200"] * (114_480 / 200) ** scan["slope"], rel=1e-6)
    markdown = out.with_suffix(".md").read_text()
    assert "| manifest scan |" in markdown and "NTU-120" in markdown
    assert out.with_suffix(".png").stat().st_size > 10_000
