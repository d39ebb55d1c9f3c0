"""Several processes (torchrun, DDP, gloo on the CPU): the data shards, the sums across processes,
and end to end: 2 processes train as well as 1, their checkpoint resumes in 1 process, and a
killed process ends the job with an error instead of a hang."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import KilnPool, kiln_env, run_kiln

import kiln
from kiln import checkpoint
from kiln.data import MemoryLoader, Normalize, Split, WorkerLoader
from kiln.data.memory import shard_length, shard_positions
from kiln.engine import distributed
from kiln.engine.evaluate import evaluate_run
from kiln.errors import ConfigError
from kiln.rundir import RunDir

# digits with the default convnet (BatchNorm, channels_last: both go through DDP), 2 epochs.
# data.batch_size is the global batch: 64 in one process, 32 in each of two.
TRAIN = ["model=convnet", "epochs=2", "batch=64", "lr=3e-3", "device=cpu", "seed=3"]
TRAIN += ["run.report=false"]  # the HTML report is not what these tests are about
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The shards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [12, 13, 65])
@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_cover_every_sample_in_the_same_number_of_steps(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_positions(order, r, world, pad=True) for r in range(world)]
    assert {len(s) for s in shards} == {shard_length(n, 0, world, pad=True)}  # same steps
    seen = torch.cat(shards)
    assert set(seen.tolist()) == set(range(n))  # every sample, each epoch
    assert len(seen) - n == -n % world  # padding: at most world - 1 samples twice


@pytest.mark.parametrize("world", [2, 4])
def test_each_global_batch_is_split_among_the_processes(world):
    """Batch b of the W processes together is batch b of one process: same samples, same
    learning rate, whatever the number of processes."""
    n, batch = 50, 8
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    one = [set(order[b : b + batch].tolist()) for b in range(0, n, batch)]
    per_rank = batch // world
    shards = [shard_positions(order, r, world, pad=True) for r in range(world)]
    steps = len(shards[0]) // per_rank + (len(shards[0]) % per_rank > 0)
    assert steps == len(one)
    for b in range(steps):
        together = set().union(*(s[b * per_rank : (b + 1) * per_rank].tolist() for s in shards))
        assert together == one[b] or b == steps - 1  # the last one may hold padding
    assert one[-1] <= together


def loaders(kind: str, n: int, world: int, shuffle: bool) -> list:
    """One loader per rank over samples whose label is their index, shuffled alike."""
    split = Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    out = []
    for r in range(world):
        g = torch.Generator().manual_seed(0)
        cls = MemoryLoader if kind == "memory" else WorkerLoader
        batch = 4 if shuffle else 5
        out.append(
            cls(split, batch, Normalize([0.0], [1.0], "cpu"), shuffle=shuffle, generator=g,
                shard=(r, world))
        )  # fmt: skip
    return out


@pytest.mark.parametrize("kind", ["memory", "workers"])
def test_loaders_give_each_rank_its_share(kind):
    train = loaders(kind, 22, 2, shuffle=True)
    labels = [torch.cat([y for _, y in loader]) for loader in train]
    assert len(train[0]) == len(train[1]) == sum(1 for _ in train[1])  # same steps per rank
    assert sorted(torch.cat(labels).tolist()) == list(range(22))  # 22 % 2 == 0: each once
    assert not set(labels[0].tolist()) & set(labels[1].tolist())
    val = loaders(kind, 23, 2, shuffle=False)  # evaluation: no padding, every sample once
    labels = torch.cat([y for loader in val for _, y in loader])
    assert sorted(labels.tolist()) == list(range(23))
    assert all(loader.num_samples == 23 for loader in val)  # sums are divided by the whole split


def test_batch_size_must_split_evenly():
    assert distributed.per_rank_batch(64, 2) == 32
    with pytest.raises(ConfigError, match=r"data.batch_size=65 .* multiple of 2"):
        distributed.per_rank_batch(65, 2)


# Sums across processes (two real processes, gloo) ---------------------------------------------
REDUCE = """
import json, os, torch
from torch import nn
from kiln.engine import distributed
from kiln.errors import RunError
torch.manual_seed(int(os.environ["RANK"]))  # each process its own random weights below
device = distributed.setup(torch.device("cpu"), 30)
r = distributed.rank()
loss, scores, seen = distributed.sum_across(
    torch.tensor(1.5 * (r + 1)), torch.tensor([r + 1.0, 10.0 * r]), 3 + r
)
bn = nn.BatchNorm1d(2)
bn.running_mean.fill_(r + 7.0)
distributed.broadcast_buffers(bn)
distributed.check_in_step(bn, "classify")  # the same weights in every process: no error
try:
    distributed.check_in_step(nn.Linear(2, 2), "gan")  # weights that differ
    drift = None
except RunError as exc:
    drift = str(exc)
got = {
    "rank": r,
    "world": distributed.world_size(),
    "loss": loss.item(),
    "scores": scores.tolist(),
    "seen": seen,
    "seen_type": type(seen).__name__,
    "stop": distributed.any_rank(r == 1),
    "shared": distributed.on_main(lambda: f"made by rank {distributed.rank()}"),
    "buffer": bn.running_mean.tolist(),
    "drift": drift,
}
if r == 1:  # rank 1 leaves without a word; rank 0's next collective must fail, and say so
    print(json.dumps(got), flush=True)
    os._exit(0)
try:
    with distributed.peer_failures(30):
        distributed.sum_across(torch.ones(3))
except RunError as exc:
    got["lost"] = str(exc)
print(json.dumps(got), flush=True)
# gloo's process group with a vanished peer can abort in its destructor at interpreter exit
# ("terminate called without an active exception"): what this test checks is printed above
os._exit(0)
"""


def test_sums_and_decisions_across_two_processes(tmp_path):
    port = free_port()
    procs = []
    for r in range(2):
        env = kiln_env(tmp_path)
        env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, "-c", REDUCE], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )  # fmt: skip
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r, got in enumerate(results):
        assert got["rank"] == r and got["world"] == 2
        assert got["loss"] == pytest.approx(1.5 + 3.0)
        assert got["scores"] == [3.0, 10.0]  # a task's vector of sums, summed as is
        assert got["seen"] == 7 and got["seen_type"] == "int"
        assert got["stop"] is True  # rank 1 asked: both stop
        assert got["shared"] == "made by rank 0"
        assert got["buffer"] == [7.0, 7.0]  # rank 0's BatchNorm statistics everywhere
        assert "weights differ" in got["drift"] and "task 'gan'" in got["drift"]
    assert results[0]["lost"].startswith("rank 0 of 2: rank 1 of 2 stopped or stopped answering")


# End to end ----------------------------------------------------------------------------------
def metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same run in 1 process and, at the same time, with `kiln train ... train.devices=2`
    (the CLI starts torchrun, which starts 2 processes)."""
    work = tmp_path_factory.mktemp("runs")
    (work / "data").mkdir()
    pool = KilnPool(workers=2)
    for name, devices in (("one", 1), ("two", 2)):
        pool.submit(
            name, "train", *TRAIN, f"train.devices={devices}", f"run.dir={work}", f"name={name}",
            cwd=work, data_dir=work / "data",
        )  # fmt: skip
    try:
        results = {name: pool.result(name) for name in ("one", "two")}
    finally:
        pool.close()
    for result in results.values():
        assert result.returncode == 0, result.stdout + result.stderr
    assert "Starting" not in results["one"].stdout
    assert "Starting 2 processes: torchrun" in results["two"].stdout
    assert results["two"].stdout.count("Epoch 2/2") == 1, results["two"].stdout  # rank 0 prints
    return {"one": work / "one", "two": work / "two"}


@pytest.fixture(scope="module")
def two_processes(runs) -> Path:
    return runs["two"]


def test_two_processes_train_as_well_as_one(runs):
    """Same global batch and seed: both reach >= 0.9 test accuracy and differ by at most 0.03
    (360 test images: 0.03 is 11 of them). They are not bitwise equal: BatchNorm normalizes
    over each process's 32 images rather than 64, and dropout draws per process."""
    one, two = (json.loads((runs[k] / "eval-test.json").read_text()) for k in ("one", "two"))
    one, two = one["accuracy"], two["accuracy"]
    assert one >= 0.9 and two >= 0.9, (one, two)
    assert abs(one - two) <= 0.03, (one, two)
    saved = RunDir(runs["two"]).load_config()
    assert saved.train.devices == 2 and saved.data.batch_size == 64


def test_logged_val_metric_is_the_whole_val_split(two_processes):
    """Each process evaluates its share; the logged value is the one-process evaluation of the
    saved weights over the whole validation split."""
    rows = metrics(two_processes)
    best = max(rows, key=lambda row: row["val_acc"])
    assert checkpoint.load(two_processes / "checkpoints" / "best.pt")["epoch"] == best["epoch"]
    result = evaluate_run(RunDir(two_processes), "val", "best")
    assert result["samples"] == 144  # digits' whole validation split
    assert result["accuracy"] == pytest.approx(best["val_acc"], abs=1e-6)  # rounded to 6 places


def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, tmp_path):
    state = checkpoint.load(two_processes / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in state["model"])  # plain, unwrapped weights
    assert len(state["rng"]["ranks"]) == 2  # each process's RNG
    result = run_kiln(
        "train", "--resume", two_processes, "train.devices=1", "train.epochs=3",
        cwd=tmp_path, data_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Starting" not in result.stdout  # one process: no torchrun
    assert "Epoch 3/3" in result.stdout and "Epoch 2/3" not in result.stdout
    rows = metrics(two_processes)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["val_acc"] >= 0.9
    assert RunDir(two_processes).load_config().train.devices == 1


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (its children, read from /proc)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc to find the ranks")
def test_killing_one_process_ends_the_job_with_an_error(tmp_path):
    """torchrun started directly (rendezvous on a free port). Rank 1 is killed after epoch 1:
    the job must end soon, non-zero, with rank 0 saying why (not hang until a timeout)."""
    timeout = 30
    cmd = [
        *TORCHRUN, "--nproc-per-node=2", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "kiln", "train", *TRAIN,
        "epochs=200", f"train.dist_timeout={timeout}", f"run.dir={tmp_path}", "name=killed",
    ]  # fmt: skip
    job = subprocess.Popen(cmd, env=kiln_env(tmp_path), cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "killed" / "metrics.csv").exists():  # epoch 1 is done
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the 2-process run did not finish an epoch"
            time.sleep(0.2)
        victim = rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = job.communicate(timeout=timeout + 60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert time.monotonic() - killed_at < timeout + 60  # ended, rather than waiting forever
    assert re.search(r"rank 0 of 2: .*stopped", err), err  # rank 0's own one-line reason
    assert "rank      : 1 (local_rank: 1)" in err  # torchrun's summary names the dead one
    assert (tmp_path / "killed" / "checkpoints" / "last.pt").is_file()  # resumable


def test_python_api_asks_for_torchrun_for_several_devices(tmp_path):
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 2"):
        kiln.train(None, progress=False, train__devices=2, run__dir=str(tmp_path))


def test_cli_checks_the_batch_split_once_before_starting_processes(cli):
    result = cli("train", "train.devices=2", "batch=63", "epochs=1")
    assert result.returncode == 2
    assert "Starting" not in result.stdout
    assert result.stderr.count("data.batch_size=63 does not split evenly over 2") == 1


def test_cpu_threads_are_shared_among_local_processes(monkeypatch):
    from kiln.data.workers import cpu_count
    from kiln.engine.device import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert set_threads() == max(1, cpu_count() // 2)
    finally:
        torch.set_num_threads(before)


def _fake_gpus(monkeypatch, count: int) -> dict:
    """torchrun's variables for the second of two processes on a machine with `count` GPUs, and
    a process group that records what it was asked for instead of connecting (no GPU here)."""
    asked: dict = {"groups": []}
    for name, value in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: asked.update(set_device=d))
    monkeypatch.setattr(
        torch.distributed,
        "init_process_group",
        lambda backend, timeout: asked.update(backend=backend, timeout=timeout),
    )
    monkeypatch.setattr(
        torch.distributed, "new_group", lambda backend, timeout: asked["groups"].append(backend)
    )
    return asked


def test_on_gpus_each_process_takes_its_own_gpu_with_nccl(monkeypatch):
    asked = _fake_gpus(monkeypatch, count=2)
    try:
        device = distributed.setup(torch.device("cuda"), timeout_s=42)
    finally:
        distributed.teardown()
    assert device == torch.device("cuda", 1)  # LOCAL_RANK picks the GPU
    assert asked["set_device"] == device
    assert asked["backend"] == "nccl" and asked["timeout"].total_seconds() == 42
    assert asked["groups"] == ["gloo"]  # the stop flag and RNG states stay on the CPU


def test_more_processes_than_gpus_is_a_config_error(monkeypatch):
    asked = _fake_gpus(monkeypatch, count=1)
    with pytest.raises(ConfigError, match="2 processes on this machine but only 1 GPU"):
        distributed.setup(torch.device("cuda"), timeout_s=42)
    assert "backend" not in asked  # refused before joining any group


def test_ctrl_c_stops_every_process_saves_and_resumes(tmp_path):
    """Ctrl-C in the terminal (SIGINT to the whole process group: kiln, torchrun and both ranks)
    after epoch 1: exit 130, the resume command said once, a last.pt that resumes."""
    cmd = [sys.executable, "-m", "kiln", "train", *TRAIN, "train.devices=2", "epochs=200",
           f"run.dir={tmp_path}", "name=stopped"]  # fmt: skip
    job = subprocess.Popen(cmd, env=kiln_env(tmp_path), cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)  # fmt: skip
    run = tmp_path / "stopped"
    try:
        deadline = time.monotonic() + 180
        while not (run / "metrics.csv").exists():  # epoch 1 is done
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the 2-process run did not finish an epoch"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGINT)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, out + err
    assert err.count(f"Resume with: kiln train --resume {run}") == 1, err
    assert "Traceback" not in err, err
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] >= 1
    resumed = run_kiln(
        "train", "--resume", run, "train.devices=1", f"train.epochs={state['epoch'] + 1}",
        cwd=tmp_path, data_dir=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [row["epoch"] for row in metrics(run)][-1] == state["epoch"] + 1


def test_unfreezing_the_backbone_rewraps_ddp_and_keeps_the_processes_in_step(tmp_path):
    """model.freeze=backbone until epoch 2 in 2 processes: DDP is made again over the parameters
    that now train (else the backbone's gradients would not be averaged and the per-epoch weight
    check would stop the job)."""
    result = run_kiln(
        "train", *TRAIN, "train.devices=2", "model.freeze=backbone", "model.unfreeze_epoch=2",
        f"run.dir={tmp_path}", "name=thawed", cwd=tmp_path, data_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Epoch 2: the backbone is unfrozen") == 1, result.stdout
    rows = metrics(tmp_path / "thawed")
    assert rows[1]["val_acc"] > rows[0]["val_acc"]  # the whole network trains in epoch 2
