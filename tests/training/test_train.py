import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from training import train as train_module
from training.checkpoint import CHECKPOINT
from training.data.sampler import EpochSampler
from training.runs import RESUMABLE
from training.train import main

from .conftest import CONFIGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from training.synth import write_dataset

    out = tmp_path_factory.mktemp("train-data")
    write_dataset(out, frames=4, seed=4, width=1280, height=720)
    return out


@pytest.fixture(scope="module")
def long_config(tmp_path_factory):
    """The tiny config with enough epochs that --max-steps decides when to stop."""
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["train"]["epochs"] = 50
    cfg["train"]["warmup_steps"] = 2
    path = tmp_path_factory.mktemp("cfg") / "tiny-long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def args(config, data, out, *extra):
    return ["--config", str(config), "--data", str(data), "--out", str(out), *map(str, extra)]


def train_cli(argv):
    """scrapscan-train in a process of its own, for runs with data-loader workers.

    The workers are forked from the process that trains; forking pytest's own process,
    which by then holds the threads of the libraries earlier tests loaded (OpenVINO's
    among them), crashed it with a segmentation fault in full-suite runs.
    """
    done = subprocess.run(
        [sys.executable, "-m", "training", *map(str, argv)], capture_output=True, text=True
    )
    return done.returncode, done.stderr


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_over_a_few_steps(train_data, long_config, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "LOG_EVERY", 1)
    run = tmp_path / "run"
    assert main(args(long_config, train_data, run, "--max-steps", "20")) == 0
    losses = [r["loss"] for r in records(run) if "loss" in r]
    assert len(losses) == 20
    # batches alternate, so compare averages: the first steps against the last ten
    first, last = sum(losses[:3]) / 3, sum(losses[-10:]) / 10
    assert last < 0.9 * first, [round(x, 2) for x in losses]
    info = json.loads((run / "run.json").read_text())
    assert info["git_revision"] != "" and info["patches"] >= 4
    assert sum(info["class_pixels"]) > 0 and len(info["class_weights"]) == 4
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["model"]["clip_model"] == "scrapscan-tiny"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/loss")] == list(range(1, 21))


def difference(a, b):
    """Mean absolute difference of two state dicts, and the share of entries that differ."""
    d = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    return float(d.mean()), float((d > 1e-5).float().mean())


def test_resumed_run_ends_where_an_uninterrupted_one_does(train_data, long_config, tmp_path):
    whole, split, short = tmp_path / "whole", tmp_path / "split", tmp_path / "short"
    common = ["--config", str(long_config), "--data", str(train_data)]
    assert main([*common, "--out", str(whole), "--max-steps", "5"]) == 0
    assert main([*common, "--out", str(split), "--max-steps", "3"]) == 0
    assert main([*common, "--out", str(split), "--max-steps", "5", "--resume"]) == 0
    assert main([*common, "--out", str(short), "--max-steps", "4"]) == 0
    a = torch.load(whole / CHECKPOINT, weights_only=False)
    b = torch.load(split / CHECKPOINT, weights_only=False)
    c = torch.load(short / CHECKPOINT, weights_only=False)
    assert a["position"] == b["position"] == {"epoch": 2, "batch": 1, "step": 5}
    group = {k: v for k, v in a["optimizer"]["param_groups"][0].items() if k != "params"}
    assert group == {k: v for k, v in b["optimizer"]["param_groups"][0].items() if k != "params"}
    # The extra eval/train switch of schedule-free AdamW at the interruption rounds in
    # float32, and Adam turns that into visible changes of a handful of parameters whose
    # gradients are near zero (seen: mean 3e-9, 0.006% of entries). A lost optimizer state
    # or another patch order changes everything, as one step less shows (seen: mean 2e-5,
    # 9% of entries).
    resumed_mean, resumed_share = difference(a["model"], b["model"])
    other_mean, other_share = difference(a["model"], c["model"])
    assert resumed_mean < 1e-7 and resumed_share < 1e-3
    assert other_mean > 1e-6 and other_share > 1e-2
    # the optimizer state (Adam moments, schedule-free z) by the same measure
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    flat = {f"{k}.{n}": v for k, d in state_a.items() for n, v in d.items() if torch.is_tensor(v)}
    other = {f"{k}.{n}": v for k, d in state_b.items() for n, v in d.items() if torch.is_tensor(v)}
    assert flat.keys() == other.keys()
    state_mean, state_share = difference(flat, other)
    assert state_mean < 1e-6 and state_share < 1e-3


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_writes_a_checkpoint_and_the_run_resumes(
    train_data, long_config, tmp_path, workers
):
    """SIGTERM to the whole process group, as systemd, Slurm and Ctrl-C send it.

    With data-loader workers the signal reaches them too; they must leave the checkpoint
    to the main process rather than die under it.
    """
    cfg = yaml.safe_load(long_config.read_text())
    cfg["train"]["num_workers"] = workers
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "training",
        *args(config, train_data, run, "--max-steps", 500),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        log = run / "metrics.jsonl"
        if log.exists() and any("loss" in json.loads(x) for x in log.read_text().splitlines()):
            break
        time.sleep(0.2)
    # Which process the kernel delivers to first varies; the workers first is the case
    # that lost the checkpoint, so make it happen every time.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == workers
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "killed by signal" not in err, err
    assert "SIGTERM: checkpoint written at step" in err and "--resume" in err
    step = torch.load(run / CHECKPOINT, weights_only=False)["position"]["step"]
    assert step >= 1
    code, err = train_cli(args(config, train_data, run, "--max-steps", step + 2, "--resume"))
    assert code == 0, err
    assert torch.load(run / CHECKPOINT, weights_only=False)["position"]["step"] == step + 2


def test_a_run_from_the_patch_cache_trains_exactly_as_one_from_the_frames(
    train_data, long_config, tmp_path
):
    cache = tmp_path / "cache"
    assert main(args(long_config, train_data, tmp_path / "plain", "--max-steps", "3")) == 0
    cached = args(long_config, train_data, tmp_path / "cached", "--max-steps", "3")
    assert main([*cached, "--patch-cache", str(cache)]) == 0
    assert (cache / "meta.json").is_file()
    plain = torch.load(tmp_path / "plain" / CHECKPOINT, weights_only=False)["model"]
    from_cache = torch.load(tmp_path / "cached" / CHECKPOINT, weights_only=False)["model"]
    assert plain.keys() == from_cache.keys()
    assert all(torch.equal(plain[k], from_cache[k]) for k in plain)
    info = [json.loads((tmp_path / r / "run.json").read_text()) for r in ("plain", "cached")]
    assert info[0]["class_weights"] == info[1]["class_weights"]


def test_refuses_to_overwrite_a_run_or_resume_nothing(train_data, long_config, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", str(long_config), "--data", str(train_data), "--out", str(run)]
    assert main([*common, "--max-steps", "1"]) == 0
    before = (run / CHECKPOINT).read_bytes()
    assert main([*common, "--max-steps", "1"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert (run / CHECKPOINT).read_bytes() == before
    assert main([*common[:-1], str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no checkpoint.pt to resume from" in capsys.readouterr().err


def test_bad_config_and_bad_data_are_reported(tmp_path, train_data, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 0}\n")
    assert (
        main(["--config", str(bad), "--data", str(train_data), "--out", str(tmp_path / "r")]) == 2
    )
    assert f"{bad}: 1 wrong field(s)" in capsys.readouterr().err
    empty = tmp_path / "nodata"
    empty.mkdir()
    assert (
        main(
            [
                "--config",
                str(CONFIGS / "tiny.yaml"),
                "--data",
                str(empty),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "neither annotations.json nor images/" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(CONFIGS / "tiny.yaml")])  # nothing to train on


def test_dry_run_prints_parameters_per_part(capsys, train_data):
    assert (
        main(["--config", str(CONFIGS / "tiny.yaml"), "--dry-run", "--data", str(train_data)]) == 0
    )
    out = capsys.readouterr().out
    for part in ("image_encoder", "prompts", "msm", "total"):
        assert f"trainable {part}" in out
    assert "spray_can" in out  # the data's class table


def test_paper_dry_run_counts(capsys):
    assert main(["--config", str(CONFIGS / "paper.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ViT-L-14-336 at 518 px, stages after blocks [6, 12, 18, 24]" in out
    lines = {" ".join(line.split()) for line in out.splitlines()}
    assert "trainable prompts 73,728" in lines
    assert "trainable msm 9,455,696" in lines


def test_epoch_sampler_splits_ranks_and_skips_done_batches():
    a = EpochSampler(10, seed=1, epoch=0, rank=0, world=2, skip=0).indices
    b = EpochSampler(10, seed=1, epoch=0, rank=1, world=2, skip=0).indices
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert EpochSampler(10, seed=1, epoch=0, rank=0, world=2, skip=2).indices == a[2:]
    assert (
        EpochSampler(10, seed=1, epoch=1, rank=0, world=1, skip=0).indices
        != EpochSampler(10, seed=1, epoch=0, rank=0, world=1, skip=0).indices
    )


def test_epoch_sampler_draws_the_asked_share_of_anomalous_patches():
    anomalous = [3, 7, 11]  # 3 of 40 patches hold a contaminant
    a = EpochSampler(40, 5, 0, 0, 1, 0, anomalous, anomaly_share=0.5).indices
    assert len(a) == 40
    drawn = Counter(a)
    assert sum(drawn[i] for i in anomalous) == 20
    # the 3 anomalous patches drawn in whole rounds: each 6 or 7 times, never 5 and 8
    assert sorted(drawn[i] for i in anomalous) == [6, 7, 7]
    # 20 draws among the 37 others: no normal patch twice
    assert all(drawn[i] == 1 for i in drawn if i not in anomalous)
    assert EpochSampler(40, 5, 0, 0, 1, 0, anomalous, anomaly_share=0.5).indices == a
    assert EpochSampler(40, 5, 1, 0, 1, 0, anomalous, anomaly_share=0.5).indices != a
    # ranks split the same order and skip what is done
    r0 = EpochSampler(40, 5, 0, 0, 2, 0, anomalous, anomaly_share=0.5).indices
    r1 = EpochSampler(40, 5, 0, 1, 2, 4, anomalous, anomaly_share=0.5).indices
    assert r0 + EpochSampler(40, 5, 0, 1, 2, 0, anomalous, 0.5).indices == a
    assert r1 == a[24:]
    # without a share, or with nothing flagged, every patch once
    assert sorted(EpochSampler(40, 5, 0, 0, 1, 0, anomalous).indices) == list(range(40))
    assert sorted(EpochSampler(40, 5, 0, 0, 1, 0, (), 0.5).indices) == list(range(40))


def test_epoch_sampler_draws_the_asked_share_of_hard_negative_patches():
    anomalous, hard = [3, 7, 11], [11, 20]  # patch 11 holds both: it counts as hard
    a = EpochSampler(40, 5, 0, 0, 1, 0, anomalous, 0.5, hard, 0.25).indices
    drawn = Counter(a)
    assert len(a) == 40
    assert sum(drawn[i] for i in hard) == 10 and sorted(drawn[i] for i in hard) == [5, 5]
    assert sum(drawn[i] for i in (3, 7)) == 20
    assert sum(drawn[i] for i in drawn if i not in (3, 7, 11, 20)) == 10
    assert all(drawn[i] == 1 for i in drawn if i not in (3, 7, 11, 20))
    # hard negatives alone; no share or no hard patch: as before
    alone = Counter(EpochSampler(40, 5, 0, 0, 1, 0, (), None, hard, 0.5).indices)
    assert alone[11] + alone[20] == 20
    plain = EpochSampler(40, 5, 0, 0, 1, 0, anomalous, 0.5).indices
    assert EpochSampler(40, 5, 0, 0, 1, 0, anomalous, 0.5, hard).indices == plain
    assert EpochSampler(40, 5, 0, 0, 1, 0, anomalous, 0.5, (), 0.25).indices == plain


def record_samplers(monkeypatch, group):
    """Make training record each epoch's (patches of the sampler's argument `group`, order)."""
    seen = []

    class Recording(EpochSampler):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append((list(a[group]), self.indices))

    monkeypatch.setattr(train_module, "EpochSampler", Recording)
    return seen


def hard_negatives_file(path, data, regions):
    """A false_regions.json listing `regions` ((bbox, score) pairs) on `data`'s first frame."""
    from training.data import load_frames

    name = load_frames(data).frames[0].image_path.name
    found = [{"bbox": list(b), "polygon": [], "class": "cable", "score": s} for b, s in regions]
    path.write_text(json.dumps({"description": "test", "frames": {name: found}}))
    return path


def test_training_draws_patches_with_served_false_regions_at_the_configured_share(
    synth_dir, tmp_path, monkeypatch, capsys
):
    from training.data import PatchSet, load_frames

    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["train"].update(hard_negative_share=0.5, hard_negative_min_score=0.8)
    config = tmp_path / "hard.yaml"
    config.write_text(yaml.safe_dump(cfg))
    patches = PatchSet(load_frames(synth_dir))
    box = patches.refs[0].tile.box
    held = (box.x + 8, box.y + 8, 64, 48)
    regions = [(held, 0.9), ((box.x1 - 40, box.y + 8, 30, 30), 0.5)]  # the second too low
    listed = hard_negatives_file(tmp_path / "false_regions.json", synth_dir, regions)
    seen = record_samplers(monkeypatch, 8)
    run = tmp_path / "run"
    assert main(args(config, synth_dir, run, "--max-steps", "1", "--hard-negatives", listed)) == 0
    (hard, order), *_ = seen
    info = json.loads((run / "run.json").read_text())
    assert hard == info["hard_negatives"]["patches"] == patches.holding({0: [held]})
    assert info["hard_negatives"]["regions"] == 1 and 0 in hard
    assert sum(i in hard for i in order) == round(0.5 * info["patches"])
    # a resumed run draws the same patches without the file
    seen.clear()
    cfg["train"]["epochs"] = 2
    config.write_text(yaml.safe_dump(cfg))
    assert main(args(config, synth_dir, run, "--max-steps", "2", "--resume")) == 0
    assert seen[0][0] == hard


def test_hard_negatives_and_their_share_go_together(synth_dir, tmp_path, capsys):
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(cfg))
    cfg["train"]["hard_negative_share"] = 0.3
    hard = tmp_path / "hard.yaml"
    hard.write_text(yaml.safe_dump(cfg))
    listed = hard_negatives_file(tmp_path / "f.json", synth_dir, [((600, 300, 40, 40), 0.9)])
    assert main(args(hard, synth_dir, tmp_path / "a")) == 2
    assert "hard.yaml has hard_negative_share 0.3 and --hard-negatives is missing" in (
        capsys.readouterr().err
    )
    assert main(args(plain, synth_dir, tmp_path / "b", "--hard-negatives", listed)) == 2
    assert "--hard-negatives is given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args(hard, synth_dir, tmp_path / "c", "--resume", "--hard-negatives", listed))
    assert "--hard-negatives starts a new run" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"frames": []}')
    assert (
        main(args(hard, synth_dir, tmp_path / "d", "--hard-negatives", tmp_path / "bad.json")) == 1
    )
    assert "bad.json: not a false_regions.json" in capsys.readouterr().err
    far = hard_negatives_file(tmp_path / "low.json", synth_dir, [((600, 300, 40, 40), 0.1)])
    cfg["train"]["hard_negative_min_score"] = 0.5
    hard.write_text(yaml.safe_dump(cfg))
    assert main(args(hard, synth_dir, tmp_path / "e", "--hard-negatives", far)) == 1
    assert "low.json: lists no region scoring at least 0.5 on the frames of" in (
        capsys.readouterr().err
    )
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_training_draws_patches_with_contaminants_at_the_configured_share(
    synth_dir, tmp_path, monkeypatch
):
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["train"]["anomaly_share"] = 0.75
    config = tmp_path / "share.yaml"
    config.write_text(yaml.safe_dump(cfg))
    seen = record_samplers(monkeypatch, 6)
    assert main(args(config, synth_dir, tmp_path / "run", "--max-steps", "1")) == 0
    (anomalous, order), *_ = seen
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert 0 < len(anomalous) == info["patches"] - info["class_patches"][0] < info["patches"]
    assert sum(i in anomalous for i in order) == round(0.75 * info["patches"])


def test_two_gloo_processes_train_together(train_data, long_config, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "training",
    ]
    cmd = [*launcher, *args(long_config, train_data, run, "--max-steps", 2, "--device", "cpu")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(run / CHECKPOINT, weights_only=False)
    assert state["position"]["step"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped


def test_binary_prompt_training_runs_and_evaluates(train_data, long_config, tmp_path):
    from training.evaluate import main as eval_main

    cfg = yaml.safe_load(long_config.read_text())
    cfg["model"]["prompt_mode"] = "binary"
    cfg["model"]["freeze_image_encoder"] = True
    path = tmp_path / "binary.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(args(path, train_data, run, "--max-steps", 2)) == 0
    assert len(json.loads((run / "run.json").read_text())["class_weights"]) == 2
    report = tmp_path / "report"
    assert (
        eval_main(
            [
                "--checkpoint",
                str(run / CHECKPOINT),
                "--data",
                str(train_data),
                "--out",
                str(report),
                "--overlays",
                "0",
            ]
        )
        == 0
    )
    per_class = json.loads((report / "report.json").read_text())["per_class_ap"]
    assert per_class == {"motor": None, "cable": None, "spray_can": None}


def with_changes(config, tmp_path, name, **train):
    cfg = yaml.safe_load(config.read_text())
    cfg["train"].update(train)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_resume_refuses_a_config_that_changes_what_the_run_computes(
    train_data, long_config, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(args(long_config, train_data, run, "--max-steps", 1)) == 0
    before = (run / CHECKPOINT).read_bytes(), (run / "config.yaml").read_text()
    other = with_changes(long_config, tmp_path, "other.yaml", lr=0.01, seed=3)
    assert main(args(other, train_data, run, "--max-steps", 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "was started with other settings" in err and "leave out --config" in err
    assert "train.lr: the run has 0.002, the config 0.01" in err and "train.seed" in err
    assert ((run / CHECKPOINT).read_bytes(), (run / "config.yaml").read_text()) == before
    # refused before any data is read: a missing data folder is not what it reports
    assert main(args(other, tmp_path / "nowhere", run, "--resume")) == 2
    assert "was started with other settings" in capsys.readouterr().err


def test_resume_refuses_data_of_another_size_and_accepts_a_moved_folder(
    train_data, long_config, tmp_path, capsys
):
    from training.synth import write_dataset

    run = tmp_path / "run"
    assert main(args(long_config, train_data, run, "--max-steps", 1)) == 0
    before = (run / CHECKPOINT).read_bytes()
    fewer = tmp_path / "fewer"
    write_dataset(fewer, frames=2, seed=4, width=1280, height=720)
    assert main(args(long_config, fewer, run, "--max-steps", 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and f"{fewer} gives" in err and "start a new run" in err
    assert (run / CHECKPOINT).read_bytes() == before
    moved = tmp_path / "moved"
    shutil.copytree(train_data, moved)
    assert main(args(long_config, moved, run, "--max-steps", 2, "--resume")) == 0
    assert "going on with" in capsys.readouterr().err
    assert torch.load(run / CHECKPOINT, weights_only=False)["position"]["step"] == 2


def test_a_finished_run_resumes_with_its_own_config_or_more_epochs(
    train_data, long_config, tmp_path
):
    run = tmp_path / "run"
    one = with_changes(long_config, tmp_path, "one.yaml", epochs=1)
    assert main(args(one, train_data, run)) == 0
    per_epoch = torch.load(run / CHECKPOINT, weights_only=False)["position"]["step"]
    # its own config.yaml by default: one epoch was asked for and done, so nothing to do
    assert main(["--data", str(train_data), "--out", str(run), "--resume"]) == 0
    assert torch.load(run / CHECKPOINT, weights_only=False)["position"]["step"] == per_epoch
    two = with_changes(long_config, tmp_path, "two.yaml", epochs=2, num_workers=1)
    code, err = train_cli(args(two, train_data, run, "--resume"))
    assert code == 0, err
    position = torch.load(run / CHECKPOINT, weights_only=False)["position"]
    assert position == {"epoch": 2, "batch": 0, "step": 2 * per_epoch}
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert recorded["epochs"] == 2 and recorded["num_workers"] == 1
    assert sorted(p.name for p in run.glob("config*")) == ["config.yaml"]


def test_config_is_needed_unless_resuming(train_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(train_data), "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "--config is needed" in capsys.readouterr().err


def test_readme_names_the_settings_a_resume_may_change():
    readme = (CONFIGS.parent / "README.md").read_text()
    sentence = readme[readme.index("`--resume` continues it") :].split(". ")[0]
    named = {s for s in RESUMABLE - {"name"} if f"`{s}`" in sentence}
    assert named == RESUMABLE - {"name"}, f"README leaves out {RESUMABLE - {'name'} - named}"


DEMO = CONFIGS.parent / "models" / "demo"


def test_a_run_starts_from_a_bundle_with_its_outputs(tiny_config, images):
    from training.checkpoint import init_weights
    from training.model import build_model

    torch.manual_seed(tiny_config.train.seed)  # the random text tower the bundle's run had
    model = build_model(tiny_config.model)
    start = init_weights(DEMO, model)
    assert start["kind"] == "bundle" and start["prompt_fit_cosine"] > 0.9999
    served = torch.export.load(DEMO / "model.pt2").module()
    no_text = torch.zeros(4, 2, 64)  # the demo bundle's four text-class slots, unused
    with torch.no_grad():
        want_probs, want_anomaly, *_ = served(images, no_text)
        got = model.eval()(images)
    assert torch.allclose(got.class_probs, want_probs, atol=5e-3)
    assert torch.allclose(got.anomaly, want_anomaly, atol=5e-3)
    assert (got.class_probs.argmax(1) == want_probs.argmax(1)).float().mean() > 0.995


def test_a_run_starts_from_a_checkpoint_with_every_weight(tiny_config, tiny_checkpoint):
    from training.checkpoint import init_weights
    from training.model import build_model

    torch.manual_seed(5)
    model = build_model(tiny_config.model)
    assert init_weights(tiny_checkpoint, model)["step"] == 3
    saved = torch.load(tiny_checkpoint, weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_init_from_is_recorded_and_a_wrong_source_stops_the_run_before_it_starts(
    train_data, long_config, tmp_path, capsys
):
    run = tmp_path / "run"
    assert (
        main([*args(long_config, train_data, run), "--max-steps", "1", "--init-from", str(DEMO)])
        == 0
    )
    assert json.loads((run / "run.json").read_text())["init_from"]["kind"] == "bundle"

    other = tmp_path / "other"
    shutil.copytree(DEMO, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["prompts"]["context_length"] = 12
    (other / "manifest.json").write_text(json.dumps(manifest))
    no_program = tmp_path / "no-program"
    shutil.copytree(DEMO, no_program)
    manifest = json.loads((no_program / "manifest.json").read_text())
    del manifest["files"]["model.pt2"]
    (no_program / "manifest.json").write_text(json.dumps(manifest))
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    wider = yaml.safe_load(long_config.read_text())
    wider["model"]["tiny_config"]["vision_cfg"]["layers"] = 5
    wider_config = tmp_path / "wider.yaml"
    wider_config.write_text(yaml.safe_dump(wider))
    wider["model"]["tiny_config"]["vision_cfg"]["layers"] = 4
    wider["train"]["seed"] = 1
    seed_config = tmp_path / "seed.yaml"
    seed_config.write_text(yaml.safe_dump(wider))
    for config, source, said in [
        (long_config, other, "prompts.context_length 12 (this config: 8)"),
        (long_config, no_program, "has no model.pt2"),
        (long_config, foreign, f"{foreign}: not a checkpoint"),
        (long_config, tmp_path / "missing", "no such file or folder"),
        (wider_config, DEMO, "its image side has other weights"),
        (seed_config, DEMO, "the prompts cannot give its text features"),
    ]:
        out = tmp_path / f"refused-{source.name}-{config.stem}"
        assert main([*args(config, train_data, out), "--init-from", str(source)]) == 1
        err = capsys.readouterr().err
        assert said in err and str(source) in err
        assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--out", str(run), "--data", str(train_data), "--resume", "--init-from", str(DEMO)])
    assert "--init-from starts a new run" in capsys.readouterr().err


def test_a_deeper_model_starts_from_a_checkpoint_answering_as_it_did(
    tiny_config, tiny_checkpoint, images
):
    from training.checkpoint import CheckpointError, init_weights, load_trained
    from training.model import build_model

    def deeper(feature_layers, dpam_from_layer):
        vision = {**tiny_config.model.tiny_config["vision_cfg"], "layers": 8}
        tiny = {**tiny_config.model.tiny_config, "vision_cfg": vision}
        return tiny_config.model.model_copy(
            update={
                "tiny_config": tiny,
                "feature_layers": feature_layers,
                "dpam_from_layer": dpam_from_layer,
            }
        )

    torch.manual_seed(5)
    model = build_model(deeper((2, 4, 6, 8), 3))
    start = init_weights(tiny_checkpoint, model)
    assert start["deepened"] == {"from_blocks": 4, "to_blocks": 8}
    old, _ = load_trained(tiny_checkpoint)
    with torch.no_grad():
        want, got = old(images), model.eval()(images)
    assert torch.allclose(got.class_probs, want.class_probs, atol=1e-6)
    assert torch.allclose(got.anomaly, want.anomaly, atol=1e-6)
    added = model.visual.transformer.resblocks[1]
    assert added.attn.in_proj_weight.abs().sum() > 0  # its own start, its output silenced
    assert added.mlp.c_proj.weight.abs().sum() == 0
    assert any(p.requires_grad for p in added.parameters())  # and it learns

    for layers, dpam_from, said in [
        ((1, 2, 3, 4), 3, "feature_layers [2, 4, 6, 8] (this config: [1, 2, 3, 4])"),
        ((2, 4, 6, 8), 2, "dpam_from_layer 3 (this config: 2)"),
    ]:
        with pytest.raises(CheckpointError, match=re.escape(said)):
            init_weights(tiny_checkpoint, build_model(deeper(layers, dpam_from)))
