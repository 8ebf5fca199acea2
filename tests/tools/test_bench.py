"""scrapscan-bench runs end to end and reports what it measured (not how fast: that is
BENCHMARKS.md's business, never a test's)."""

import json
from pathlib import Path

import pytest

from tools.bench import main, percentile

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
ENGINES = ("onnxruntime-cpu", "openvino-cpu-fp32", "openvino-cpu-bf16")
"""What engine auto may serve on a CPU machine."""


def test_engine_bench_counts_flops_and_the_peak(tmp_path, capsys):
    out = tmp_path / "engine.json"
    assert (
        main(
            [
                "engine",
                "--model",
                "tiny",
                "--batch",
                "1",
                "2",
                "--seconds",
                "0.2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["engine"].startswith("torch-cpu") and r["flops_per_tile"] > 0
    assert [row["batch"] for row in r["rows"]] == [1, 2]
    assert all(row["tiles_per_s"] > 0 and 0 < row["fraction_of_peak"] < 1 for row in r["rows"])
    assert "| batch | tiles/s | of the peak |" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_bench_runs_the_bundle_on_the_engine_asked(tmp_path, engine):
    out = tmp_path / "engine.json"
    argv = ["engine", "--model", str(DEMO), "--engine", engine, "--precision", "fp32"]
    assert main([*argv, "--batch", "2", "--seconds", "0.2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (
        r["engine"] == {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu-fp32"}[engine]
    )
    assert r["rows"][0]["batch"] == 2 and r["rows"][0]["tiles_per_s"] > 0


def test_e2e_bench_posts_frames_through_http(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    args = [
        "e2e",
        "--cameras",
        "2",
        "--seconds",
        "2",
        "--width",
        "640",
        "--height",
        "360",
        "--distinct-frames",
        "2",
        "--bed",
        "full",
        "--engine-tiles-per-s",
        "40",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["frames"] >= 2 and r["frames_per_s"] > 0 and r["engine"] in ENGINES
    assert r["latency_s"]["50"] <= r["latency_s"]["99"]
    assert set(r["stage_ms_p50"]) >= {"decode", "tile", "infer", "merge", "encode"}
    assert r["gpu_busy"] is None  # no NVML here: said, not made up
    assert r["tiles_per_frame"] == 2  # 640x360 with a full bed: two 512 px tiles
    assert r["engine_bound_frames_per_s"] == 20
    assert "outside the model" in capsys.readouterr().out


@pytest.mark.parametrize("store", ["sqlite", "redis", "redis+s3"])
def test_store_bench_fills_a_store_and_times_every_route(store, tmp_path, capsys, request):
    where = ["--redis-url", request.getfixturevalue("redis_url")] if "redis" in store else []
    if store == "redis+s3":
        where += ["--s3-url", request.getfixturevalue("s3_url")]
    store = store.partition("+")[0]
    args = ["store", "--store", store, "--frames", "60", "--big-truck", "20", "--repeat", "2"]
    assert main([*args, *where, "--json", str(tmp_path / "s.json")]) == 0
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["frames"] == 60 and r["bytes_per_frame"] > 0
    assert set(r["routes"]) >= {"feed, first page", "truck report, 20 frames"}
    assert all(v["p95_ms"] >= v["p50_ms"] > 0 for v in r["routes"].values())
    if store == "sqlite":  # a tenth of the frames' files
        assert r["purge"]["purged"] == 6
        assert {"calls", "p99_ms", "max_ms"} == set(r["purge"]["during"])
        # its holds of the store's lock, timed apart from the calls
        assert r["purge"]["purge_lock_holds"]["calls"] >= 1
    if "--s3-url" in where:  # no image bytes in Redis; the deletion list instead
        assert r["redis_bytes_by_key"]["frame:<id>:image"] == 0
        assert r["redis_bytes_by_key"]["objects (per frame)"] > 0
        # a tenth of the frames' objects deleted: the upload and three result files each
        assert r["purge"]["purged"] == 6 * 4 and r["purge"]["purge_lock_holds"] is None
    elif store == "redis":  # Redis alone expires its keys itself: no purge to time
        assert r["purge"] is None
    assert "| truck listing, first page |" in capsys.readouterr().out


def test_bad_arguments_are_refused(capsys):
    assert main(["e2e", "--cameras", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["store", "--store", "redis", "--frames", "10"]) == 2
    assert "--redis-url" in capsys.readouterr().err
    assert main(["store", "--store", "sqlite", "--frames", "0"]) == 2
    assert main(["store", "--store", "sqlite", "--frames", "5", "--s3-url", "http://s3"]) == 2
    assert "--s3-url goes with --store redis" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["e2e", "--mode", "fastest"])


def test_percentiles():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
