"""`tilesight train` under torchrun on CPU (gloo): two processes train as one run and
export one version, and a run killed mid-way resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tilesight.errors import InvalidInput
from tilesight.training.distributed import process_group

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "buildings" / "tanzania"


def torchrun(tmp: Path, *args: str) -> list[str]:
    """The command line: two CPU processes, one thread each, a tiny U-Net; `tmp` holds
    the chip cache shared by every run of the module. No --distributed: torchrun's
    environment is enough."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tilesight.cli", "train", "-i", str(DATA), "-l", str(DATA / "labels.geojson"),
        "--width", "4", "--depth", "2", "--batch-size", "2", "--block-zoom", "19",
        "--threads", "1", "--max-steps-per-epoch", "2", "--cache-dir", str(tmp / "chips"),
        *args,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    return {**env, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def run(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(tmp, *args), cwd=tmp, env=_env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def versions(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "buildings").iterdir() if not p.name.startswith("."))


def metadata(repo: Path, version: str) -> dict:
    return json.loads((repo / "buildings" / version / "metadata.json").read_text())


def _children(pid: int) -> list[int]:
    """torchrun starts each worker in a session of its own, so killing the launcher's
    process group would leave them training: they are found by parent id instead."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp")


def test_two_processes_train_one_run_and_export_one_version(tmp: Path) -> None:
    started = time.perf_counter()
    done = run(tmp, "--epochs", "2", "--model-repo", "repo", "--run-dir", "run")
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert versions(tmp / "repo") == ["1"]
    meta = metadata(tmp / "repo", "1")
    hyper = meta["hyperparameters"]
    # 2 training chips, 1 per process: each step sees both, at twice the single lr
    assert hyper["world_size"] == 2 and hyper["effective_batch_size"] == 2
    assert hyper["effective_lr"] == pytest.approx(2 * hyper["loop"]["lr"])
    history = meta["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["effective_batch"] == 2 and "val" in h for h in history)
    # rank 0 alone reports: each epoch line once, one table, one export line
    assert done.stdout.count("epoch   1  val loss") == 1
    assert done.stdout.count("exported") == 1
    # and what it trained and validated on, and how its cut was chosen
    split = meta["split"]
    assert done.stdout.count(f"split: {split['train_tiles']} training tile(s)") == 1
    assert done.stdout.count("cut: threshold") == 1
    assert seconds < 60, f"torchrun run took {seconds:.0f} s"


def test_killed_run_resumes_from_its_last_checkpoint(tmp: Path) -> None:
    run_dir, repo = tmp / "killed", tmp / "repo-killed"
    cmd = torchrun(tmp, "--epochs", "200", "--max-steps-per-epoch", "1", "--tune-fraction",
                   "0", "--model-repo", str(repo), "--run-dir", str(run_dir))  # fmt: skip
    log = tmp / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=_env(), stdout=out, stderr=out)
    last = run_dir / "last.pt"
    try:
        deadline = time.monotonic() + 90
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), log.read_text()[-3000:]
    finally:  # as when the machine goes: every process at once, no clean-up
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    saved = torch.load(last, weights_only=False)["epoch"]
    assert 1 <= saved < 200 and not (repo / "buildings").exists()

    done = run(tmp, "--epochs", str(saved + 1), "--tune-fraction", "0", "--model-repo",
               str(repo), "--run-dir", str(run_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"epoch {saved + 1:3d}  val loss" in done.stdout
    assert "epoch   1  val loss" not in done.stdout  # the saved epochs are not trained again
    assert versions(repo) == ["1"]
    history = metadata(repo, "1")["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, saved + 2))


def test_distributed_outside_torchrun_says_how_to_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launch = "torchrun --standalone --nproc_per_node"
    with pytest.raises(InvalidInput, match=launch), process_group(True):
        pass
