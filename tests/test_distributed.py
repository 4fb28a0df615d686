"""Runs on several processes (torch.distributed, gloo on this CPU): sharding, meta-gradients,
evaluation, and ``torchrun -m metatl.train`` against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from episodes import EpisodeDataset, EpisodeSpec
from metatl.config import load_config
from metatl.tracking import MultiTracker
from metatl.training import load_checkpoint
from metatl.training.builders import build_learner
from metatl.training.data import ImageTransform
from metatl.training.distributed import Ranks, any_rank, current_ranks, seed_ranks
from metatl.training.evaluation import evaluate
from metatl.training.meta_train import EpisodicSteps, _ShardedSteps
from metatl.training.preemption import EXIT_PREEMPTED, Interrupted, StopRequest
from metatl.training.pretrain import Pretrainer, build_model
from tests.conftest import make_pattern_images

REPO = Path(__file__).parents[1]

# Each learner's meta-gradient is compared: (name, config overrides).
LEARNERS = {
    "protonet": [],
    "maml": ["model.algorithm=maml", "model.maml.inner_steps=2"],
    "fomaml": ["model.algorithm=fomaml", "model.maml.inner_steps=2"],
    "anil": ["model.algorithm=anil", "model.maml.inner_steps=2"],
    "maml-running-bn": ["model.algorithm=maml", "model.maml.bn=running"],
    "metasgd": ["model.algorithm=metasgd", "model.maml.inner_steps=2"],
}
META_BATCH = 3  # not a multiple of 2: the ranks get 1 and 2 episodes


# ---- sharding ------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_shards_of_a_step_are_the_one_process_meta_batch(world: int) -> None:
    for meta_batch in range(1, 8):
        for first_step, last_step in [(1, 5), (4, 6)]:
            shards = [
                list(_ShardedSteps(first_step, last_step, meta_batch, Ranks(r, world)))
                for r in range(world)
            ]
            one = list(_ShardedSteps(first_step, last_step, meta_batch, Ranks()))
            assert sorted(i for shard in shards for i in shard) == one
            assert one == list(range((first_step - 1) * meta_batch, last_step * meta_batch))
            sizes = [len(Ranks(r, world).shard(meta_batch)) for r in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_sharded_episodes_are_drawn_from_seed_and_index_alone() -> None:
    data = make_pattern_images(n_classes=12, per_class=6)
    stream = EpisodeDataset.from_spec(data, EpisodeSpec(3, 1, 2), seed=5, num_episodes=12)
    one = {i: stream[i].support_idx.tolist() for i in range(12)}
    for world in (2, 3):
        for rank in range(world):
            for i in _ShardedSteps(1, 4, 3, Ranks(rank, world)):
                fresh = EpisodeDataset.from_spec(data, EpisodeSpec(3, 1, 2), 5, 12)
                assert fresh[i].support_idx.tolist() == one[i]


# ---- one step, two processes ------------------------------------------------------------------


def _config(name: str, root: str = "unused", extra: list[str] | None = None) -> Any:
    return load_config(
        None,
        [
            "data.dataset=image_folder",
            f"data.root={root}",
            "episodes.way=3",
            "episodes.shot=2",
            "episodes.query=2",
            f"train.meta_batch={META_BATCH}",
            "train.steps=4",
            "model.backbone=conv4",
            "device=cpu",
            *LEARNERS[name],
            *(extra or []),
        ],
    )


def _one_step(name: str) -> dict[str, torch.Tensor]:
    """The meta-gradient of step 1 (float64) and the BatchNorm statistics after it."""
    torch.manual_seed(0)
    data = make_pattern_images(n_classes=10, per_class=8, size=28)
    config = _config(name)
    learner = build_learner(config, 1, 28, n_way=3).double()
    loss = learner.loss
    learner.loss = lambda episode: loss(episode.map_images(lambda x: x.double()))  # type: ignore[method-assign]
    steps = EpisodicSteps(learner, data, data, config)
    steps.train_step(1)
    out = {f"grad/{n}": p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    out |= {f"buffer/{n}": b.clone() for n, b in learner.named_buffers()}
    return out


def _ordered_steps(name: str) -> dict[str, Any]:
    """Three float32 steps with ``train.gradient_sum=episode_order``: the last step's
    gradients and metrics, and the weights after it."""
    torch.manual_seed(0)
    data = make_pattern_images(n_classes=10, per_class=8, size=28)
    config = _config(name, extra=["train.gradient_sum=episode_order", "precision=fp32"])
    learner = build_learner(config, 1, 28, n_way=3)
    steps = EpisodicSteps(learner, data, data, config)
    metrics = [steps.train_step(step) for step in (1, 2, 3)]
    out: dict[str, Any] = {"metrics": metrics}
    out |= {
        f"grad/{n}": p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None
    }
    out |= {f"weight/{n}": p.detach().clone() for n, p in learner.named_parameters()}
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {name: _one_step(name) for name in LEARNERS}
        results |= {f"ordered/{name}": _ordered_steps(name) for name in LEARNERS}
        results["evaluate"] = _evaluation()
        stop = StopRequest()
        if rank == 1:  # the signal reaches one rank: both stop, at the same episode
            stop.signal_name = "SIGTERM"
        try:
            _evaluation(stop)
            results["stopped"] = False
        except Interrupted:
            results["stopped"] = True
        results["any"] = [any_rank(rank == 0), any_rank(False)]
        results["ranks"] = current_ranks()
        results["pretrain"] = _pretrain_step(tempfile.mkdtemp(dir=out_dir))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _pretrainer(run_dir: str) -> Pretrainer:
    torch.manual_seed(2)
    data = make_pattern_images(n_classes=6, per_class=9, size=28)
    config = load_config(
        None, ["pretrain.batch_size=15", "pretrain.epochs=1", "device=cpu", "precision=fp32"]
    )
    model = build_model(config, data).double()
    trainer = Pretrainer(model, config, data, data, Path(run_dir), MultiTracker(()))
    trainer.objective.inputs = _in_float64(trainer.objective.inputs)  # type: ignore[method-assign]
    return trainer


def _in_float64(inputs: Any) -> Any:
    return lambda images, generator: inputs(images, generator).double()


def _pretrain_step(run_dir: str) -> dict[str, Any]:
    """One supervised pretraining step (float64): its metrics, the gradients and the model."""
    trainer = _pretrainer(run_dir)
    metrics = trainer.train_step(1)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    return {"metrics": metrics, "grads": grads, "model": trainer.model.state_dict()}


def _evaluation(stop: StopRequest | None = None) -> list[float]:
    torch.manual_seed(1)
    data = make_pattern_images(n_classes=10, per_class=8, size=28)
    learner = build_learner(_config("protonet"), 1, 28, n_way=3)
    transform = ImageTransform(learner.backbone.input_spec)
    result = evaluate({"m": learner}, data, EpisodeSpec(3, 1, 3), 7, 3, transform, stop=stop)
    return list(result["m"].accuracies)


@pytest.fixture(scope="module")
def two_ranks() -> list[dict[str, Any]]:
    """What :func:`_worker` returned on each of 2 gloo processes."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _worker,
            args=(2, str(Path(tmp) / "init"), tmp),
            nprocs=2,
            join=True,
            start_method="spawn",
        )
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", list(LEARNERS))
def test_two_processes_give_the_one_process_meta_gradient(
    two_ranks: list[dict[str, Any]], name: str
) -> None:
    one = _one_step(name)
    assert any(k.startswith("grad/backbone") for k in one)
    for rank in two_ranks:
        two = rank[name]
        assert two.keys() == one.keys()
        for key, value in one.items():
            if key.endswith("num_batches_tracked"):
                assert torch.equal(two[key], value), key
            else:
                scale = max(1.0, float(value.abs().max()))
                assert torch.allclose(two[key], value, rtol=0, atol=1e-9 * scale), key


@pytest.mark.parametrize("name", list(LEARNERS))
def test_episode_order_sum_gives_one_process_weights_bit_for_bit(
    two_ranks: list[dict[str, Any]], name: str
) -> None:
    """train.gradient_sum=episode_order: after three float32 Adam steps on 2 ranks, every
    gradient, weight and metric is the one-process one, bit for bit."""
    one = _ordered_steps(name)
    assert one["metrics"][0]["loss"] != one["metrics"][2]["loss"]  # it trained
    for rank in two_ranks:
        two = rank[f"ordered/{name}"]
        assert two.keys() == one.keys()
        assert two["metrics"] == one["metrics"]
        for key, value in one.items():
            if key != "metrics":
                assert torch.equal(two[key], value), key


def test_bn_running_statistics_moved_as_in_one_process(two_ranks: list[dict[str, Any]]) -> None:
    """ProtoNet's step updates the running statistics once per episode: the composed update
    on two ranks is the sequential one (checked above), and it did move."""
    before = build_learner(_config("protonet"), 1, 28, n_way=3).state_dict()
    after = two_ranks[0]["protonet"]
    key = "backbone.features.0.1.running_mean"
    assert not torch.allclose(after[f"buffer/{key}"], before[key].double())
    assert int(after["buffer/backbone.features.0.1.num_batches_tracked"]) == META_BATCH


def test_evaluation_split_over_ranks_equals_one_process(two_ranks: list[dict[str, Any]]) -> None:
    one = _evaluation()
    assert len(one) == 7
    for rank in two_ranks:
        assert rank["evaluate"] == one  # same episodes, same order, same numbers


def test_a_stop_that_reaches_one_rank_stops_all(two_ranks: list[dict[str, Any]]) -> None:
    assert [r["stopped"] for r in two_ranks] == [True, True]
    assert [r["any"] for r in two_ranks] == [[True, False], [True, False]]
    assert [r["ranks"] for r in two_ranks] == [Ranks(0, 2, 0), Ranks(1, 2, 0)]


def test_pretraining_is_data_parallel_the_ddp_way(
    two_ranks: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Each rank takes a block of the batch (BatchNorm normalises each block by its own
    statistics, as DDP without SyncBatchNorm): the gradient is the one-process gradient of
    the blocks' losses weighted by their sizes, and every rank ends with the same weights."""
    trainer = _pretrainer(str(tmp_path))
    trainer.model.train()
    weighted_loss, batch = 0.0, trainer.batch_size
    for rank in range(2):
        trainer.ranks = Ranks(rank, 2)
        inputs, items = trainer.batch(0, 0)
        outputs = trainer.objective.forward(trainer.model, inputs)
        labels = trainer.train_data.labels[items]
        loss, _ = trainer.objective.criterion(outputs, labels)
        (loss * len(items) / batch).backward()
        weighted_loss += float(loss.detach()) * len(items) / batch
    assert [len(Ranks(r, 2).shard(batch)) for r in range(2)] == [7, 8]
    for rank in two_ranks:
        step = rank["pretrain"]
        assert step["metrics"]["loss"] == pytest.approx(weighted_loss, rel=1e-12)
        for name, p in trainer.model.named_parameters():
            assert torch.allclose(step["grads"][name], p.grad, rtol=0, atol=1e-9), name
    first, second = (r["pretrain"]["model"] for r in two_ranks)
    for key, value in first.items():
        assert torch.equal(second[key], value), key


# ---- torchrun -m metatl.train -----------------------------------------------------------------


def _args(folder: Path, out_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "data.dataset=image_folder",
        f"data.root={folder}",
        f"out_dir={out_dir}",
        f"name={name}",
        "train.steps=60",
        "train.val_every=20",
        "train.val_episodes=10",
        "train.log_every=5",
        "episodes.way=5",
        "episodes.shot=2",
        "episodes.query=3",
        f"train.meta_batch={META_BATCH}",
        "test.episodes=15",
        "test.shots=[1]",
        "optim.lr=0.003",
        "optim.lr_decay_every=25",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "METATL_DIST_TIMEOUT_S": "60"}


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _train(args: list[str], processes: int) -> subprocess.CompletedProcess[str]:
    if processes == 1:
        command = [sys.executable, "-m", "metatl.train", *args]
    else:
        command = [*_torchrun(), "-m", "metatl.train", *args]
    return subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.mark.slow
def test_torchrun_training_matches_one_process(folder_dataset: Path, tmp_path: Path) -> None:
    """60 steps of ProtoNet on 2 processes and on 1: the same test accuracy, and the same
    weights up to round-off as Adam grows it. Summing a meta-batch's gradients in another
    order changes their last bits; Adam divides by the gradient's running RMS, so the
    difference grows over the steps (measured: 2e-3 of the norm after 60 steps; a different
    seed differs by order 1). Conv biases under BatchNorm and the last BatchNorm's shift are
    not compared: their exact gradient is zero, so what they get is pure round-off, which
    Adam turns into full steps; they cancel in every prediction."""
    one = _train(_args(folder_dataset, tmp_path, "one"), 1)
    assert one.returncode == 0, one.stderr
    two = _train(_args(folder_dataset, tmp_path, "two"), 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("Test accuracy") == 1  # rank 0 reports
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")]
    assert results[0]["test"] == results[1]["test"]
    assert results[0]["best_val"]["step"] == results[1]["best_val"]["step"]
    weights = [load_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("one", "two")]
    compared = 0
    for key, value in weights[0].items():
        if key.endswith(".weight"):
            assert _relative_difference(weights[1][key], value) < 1e-2, key
            compared += 1
        elif key.endswith("num_batches_tracked"):
            assert torch.equal(weights[1][key], value)
    assert compared == 8
    # Only rank 0 wrote: one metrics log, with each logged step once.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines if '"kind": "metrics"' in x and "train/" in x]
    assert steps == sorted(set(steps))

    # python -m metatl.evaluate splits the episodes over the ranks: the same numbers.
    evaluate = ["-m", "metatl.evaluate", "--checkpoint", str(tmp_path / "two"), "--episodes", "13"]
    tables = []
    for n, launcher in ((1, [sys.executable]), (2, _torchrun())):
        out = tmp_path / f"eval{n}.json"
        command = [*launcher, *evaluate, "--json", str(out), "--out-dir", str(tmp_path / f"e{n}")]
        done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("Report:") == 1
        tables.append(json.loads(out.read_text()))
    assert tables[0] == tables[1]
    assert not (tmp_path / "e2-2").exists()  # one evaluation directory


@pytest.mark.slow
def test_episode_order_training_is_the_one_process_run(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """300 MAML steps with ``train.gradient_sum=episode_order`` on 2 processes and on 1:
    every weight bit for bit, the same test table. The BatchNorm running statistics are
    composed across ranks to round-off (an average that forgets, so it does not grow)."""
    extra = ["train.steps=300", "optim.lr_decay_every=150", "train.val_every=100"]
    extra += ["model.algorithm=maml", "model.maml.bn=running", "train.gradient_sum=episode_order"]
    for name, processes in (("one", 1), ("two", 2)):
        done = _train(_args(folder_dataset, tmp_path, name, *extra), processes)
        assert done.returncode == 0, done.stderr
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")]
    assert results[0]["test"] == results[1]["test"]
    weights = [load_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        if "running_" in key:
            assert _relative_difference(weights[1][key], value) < 1e-5, key
        else:
            assert torch.equal(weights[1][key], value), key


@pytest.mark.slow
def test_torchrun_transfer_compare_matches_one_process(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """``metatl.transfer compare`` under torchrun: episodes split, the one-process table."""
    args = [
        "-m",
        "metatl.transfer",
        "compare",
        "--quick",
        "--source",
        "rnd=conv4@random",
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "compare.way=3",
        "compare.query=4",
        "compare.episodes=9",
        "compare.finetune_blocks=[4]",
        "compare.score_images=40",
        "tracking.wandb.mode=disabled",
    ]
    for n, launcher in ((1, [sys.executable]), (2, _torchrun())):
        command = [*launcher, *args, f"name=c{n}"]
        done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    one, two = (json.loads((tmp_path / f"c{n}" / "results.json").read_text()) for n in (1, 2))
    assert one["results"] == two["results"]
    assert one["rank_correlation"] == two["rank_correlation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1", "c2"]


@pytest.mark.slow
def test_a_sweep_trial_runs_under_torchrun(folder_dataset: Path, tmp_path: Path) -> None:
    """The sweep controller runs once; a spec whose command starts torchrun makes each trial
    a 2-process run, which rank 0 writes where the controller reads it."""
    from metatl import sweep as sweep_cli
    from tests.test_sweep import _tiny_sweep

    spec = _tiny_sweep(tmp_path, folder_dataset, 12, 6, parameters={"optim.lr": {"value": 3e-3}})
    text = spec.read_text().replace(
        "- ${interpreter}\n",
        "- ${interpreter}\n- -m\n- torch.distributed.run\n- --standalone\n"
        "- --nproc-per-node\n- '2'\n",
    )
    assert "torch.distributed.run" in text
    spec.write_text(text)
    out = tmp_path / "sweeps"
    assert sweep_cli.main([str(spec), "--out-dir", str(out), "--poll", "0.3"]) == 0
    (sweep_dir,) = out.iterdir()
    (trial,) = json.loads((sweep_dir / "results.json").read_text())["trials"]
    assert trial["state"] == "finished" and trial["metric"] is not None
    assert "rank 0 of 2" in (sweep_dir / "trials" / f"{trial['name']}.log").read_text()


def test_each_rank_draws_its_own_random_numbers_inside_a_step() -> None:
    torch.manual_seed(7)
    untouched = torch.get_rng_state()
    seed_ranks(7, Ranks())
    assert torch.equal(torch.get_rng_state(), untouched)  # one process: as it always was
    draws = []
    for rank in (0, 1, 0):
        seed_ranks(7, Ranks(rank, 2))
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def test_commands_without_a_distributed_mode_refuse_torchrun_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from metatl.adaptation import run_adaptation
    from metatl.config import ConfigError
    from metatl.sweep import main as sweep_main
    from metatl.transfer.compare_run import run_compare
    from metatl.transfer.study import run_layer_study

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="one process"):
        run_adaptation(load_config(None, [f"out_dir={tmp_path / 'runs'}"]))
    with pytest.raises(ConfigError, match="one process"):
        run_layer_study(load_config(None, [f"out_dir={tmp_path / 'runs'}"]))
    assert sweep_main(["spec.yaml"]) == 2
    assert "python -m metatl.sweep runs on one process" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="all_labels"):
        run_compare(
            load_config(None, ["compare.sources=[r=conv4@random]", "compare.all_labels=true"])
        )
    assert not (tmp_path / "runs").exists()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _wait_for_step(log: Path, step: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while not (log.exists() and f'"step": {step},' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_under_torchrun_is_exact(folder_dataset: Path, tmp_path: Path) -> None:
    """SIGTERM to torchrun mid-run (it passes it to every rank), then ``--resume`` under
    torchrun: the same weights and results as an uninterrupted 2-process run."""
    args = _args(folder_dataset, tmp_path, "cut", "train.steps=200", "train.val_every=100")
    command = [*_torchrun(), "-m", "metatl.train", *args]
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(tmp_path / "cut" / "metrics.jsonl", 30, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped_at = load_checkpoint(tmp_path / "cut" / "last.pt")["step"]
    assert 30 <= stopped_at < 200, stderr
    resume = [*_torchrun(), "-m", "metatl.train", "--resume", str(tmp_path / "cut")]
    done = subprocess.run(resume, cwd=REPO, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = _train(
        _args(folder_dataset, tmp_path, "whole", "train.steps=200", "train.val_every=100"), 2
    )
    assert whole.returncode == 0, whole.stderr
    cut, uncut = (load_checkpoint(tmp_path / n / "last.pt") for n in ("cut", "whole"))
    for key, value in uncut["model"].items():
        assert torch.equal(cut["model"][key], value), key
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("cut", "whole")]
    assert results[0]["test"] == results[1]["test"]


def test_a_killed_rank_fails_the_job_and_leaves_the_checkpoint(
    folder_dataset: Path, tmp_path: Path
) -> None:
    args = _args(folder_dataset, tmp_path, "run", "train.steps=100000", "train.val_every=20")
    command = [*_torchrun(), "-m", "metatl.train", *args]
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(tmp_path / "run" / "metrics.jsonl", 25, proc)
    workers = [pid for agent in _children(proc.pid) for pid in [agent, *_children(agent)]]
    ranks = [pid for pid in workers if b"metatl.train" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(ranks[-1], signal.SIGKILL)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode not in (0, EXIT_PREEMPTED), stderr
    assert time.monotonic() - started < 90
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["step"] >= 20 and "rng_ranks" in checkpoint
