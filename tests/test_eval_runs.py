"""Resumption after a crash (simulated and a real kill -9) and two-process sharding on CPU (gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmfix.cli import cli
from vlmfix.eval import tasks
from vlmfix.testing import tiny_llava, write_tiny_coco

REPO = Path(__file__).resolve().parents[1]
OBJS = {i: objs for i, objs in enumerate([  # disjoint, so any two images leave three absent objects each
    ["person", "dog", "cup"], ["cat", "chair", "bottle"], ["car", "bird", "horse"],
    ["dining table", "apple", "umbrella"], ["orange", "bus", "bench"], ["train", "boat", "clock"]], start=1)}
VOCAB = ["Yes", "No", "no", "not", "yes", ".", ",", "Is", "there", "a", "an", "in", "the", "image", "?",
         *sorted({w for objs in OBJS.values() for o in objs for w in o.split()})]


class Crash(Exception):
    """Stands for the process dying mid-run (click would turn KeyboardInterrupt into a clean abort)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    ann, img = write_tiny_coco(root, OBJS, {i: ["a photo."] for i in OBJS}, image_size=16)
    model, processor = tiny_llava(vocab=VOCAB, init_std=0.3, seed=1)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root, ann / "instances_val.json", img, root / "model"


def pope_args(world, out, *extra):
    _, ann, img, model = world
    return ["eval", "pope", "--model", str(model), "--coco-annotations", str(ann), "--images", str(img),
            "--num-images", "2", "--max-new-tokens", "3", "--batch-size", "3", "--device", "cpu",
            "--output", str(out), "--no-progress", *extra]


def results(out):
    res = json.loads((Path(out) / "baseline" / "results.json").read_text())
    samples = [json.loads(x) for x in (Path(out) / "baseline" / "samples.jsonl").read_text().splitlines()]
    return res["splits"], [(s["key"], s["answer"]) for s in samples]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = CliRunner().invoke(cli, pope_args(world, out), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    splits, answers = results(out)
    assert len(answers) == 36 and len({a for _, a in answers}) > 1  # answers vary, so equality means something
    return splits, answers


def test_resume_after_simulated_crash(world, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = tasks.generate_batch

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(tasks, "generate_batch", crashing)
    with pytest.raises(Crash):
        CliRunner().invoke(cli, pope_args(world, out), catch_exceptions=False)
    monkeypatch.setattr(tasks, "generate_batch", real)
    shard = out / "baseline" / "shards" / "rank0.jsonl"
    assert len(shard.read_text().splitlines()) == 12
    assert not (out / "baseline" / "results.json").exists()
    with open(shard, "a") as f:
        f.write('{"key": "random:13", "split": "ran')  # torn last line
    r = CliRunner().invoke(cli, pope_args(world, out))
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(cli, pope_args(world, out, "--resume", "--max-new-tokens", "4"))
    assert r.exit_code == 1 and "max_new_tokens" in r.output  # resuming with other settings is refused
    r = CliRunner().invoke(cli, pope_args(world, out, "--resume"), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert results(out) == reference


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_resume_after_kill_9(world, reference, tmp_path):
    out = tmp_path / "run"
    args = pope_args(world, out)
    args[args.index("--batch-size") + 1] = "3"
    proc = subprocess.Popen([sys.executable, "-m", "vlmfix", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "baseline" / "shards" / "rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and len(shard.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "baseline" / "results.json").exists()
    assert 4 <= len(shard.read_bytes().splitlines()) < 36
    r = CliRunner().invoke(cli, pope_args(world, out, "--resume"), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert results(out) == reference


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_sharding_matches_single_process(world, reference, tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "vlmfix", *pope_args(world, out)], cwd=REPO,
                              env=_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port, OMP_NUM_THREADS=1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    shards = sorted(p.name for p in (out / "baseline" / "shards").iterdir())
    assert shards == ["rank0.jsonl", "rank1.jsonl"]
    assert all((out / "baseline" / "shards" / s).read_text() for s in shards)
    assert results(out) == reference
    proto = json.loads((out / "baseline" / "results.json").read_text())["protocol"]
    assert proto["world_size"] == 2
