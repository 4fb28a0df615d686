"""Device choice and autocast precision."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from metatl import train as train_cli
from metatl.algorithms import ProtoNet
from metatl.backbones import create_backbone
from metatl.config import ConfigError, load_config
from metatl.training.device import autocast, grad_scaler, resolve_device


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_an_absent_device_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda but CUDA is not available.*device=auto"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device=mps but MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device=cuda:3 but only 1 CUDA device\(s\)"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="device='tpu' is not allowed"):
        load_config(None, ["device=tpu"])
    with pytest.raises(ConfigError, match="precision='fp8' is not allowed"):
        load_config(None, ["precision=fp8"])


def test_autocast_runs_convolutions_in_bf16_and_prototype_distances_in_fp32() -> None:
    torch.manual_seed(0)
    net = ProtoNet(create_backbone("conv4", hidden=8)).eval()
    x = torch.randn(10, 1, 28, 28)
    support_y = torch.arange(5).repeat(2)
    cpu = torch.device("cpu")
    with torch.no_grad():
        reference = net.predict(x, net.adapt(x, support_y, 5))
        with autocast(cpu, "fp32"):
            assert torch.equal(net.predict(x, net.adapt(x, support_y, 5)), reference)
        with autocast(cpu, "bf16"):
            assert net.backbone(x).dtype == torch.bfloat16
            logits = net.predict(x, net.adapt(x, support_y, 5))
    assert logits.dtype == torch.float32
    # bf16 features carry ~3 significant digits (an untrained net's near-ties may swap).
    assert torch.allclose(logits, reference, rtol=0.05, atol=0.05 * reference.abs().max())


def test_the_loss_scaler_is_for_fp16_only(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    assert not grad_scaler(cpu, "fp32").is_enabled()
    assert not grad_scaler(cpu, "bf16").is_enabled()
    with caplog.at_level(logging.WARNING, logger="metatl.training.device"):
        assert grad_scaler(cpu, "fp16").is_enabled()
    assert "use precision=bf16" in caplog.text


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_at_reduced_precision_learns(
    precision: str, folder_dataset: Path, tmp_path: Path
) -> None:
    args = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "name=run",
        f"precision={precision}",
        "train.steps=20",
        "train.val_every=20",
        "train.val_episodes=20",
        "train.log_every=10",
        "episodes.way=5",
        "episodes.shot=2",
        "episodes.query=3",
        "test.episodes=20",
        "test.shots=[5]",
        "optim.lr=0.003",
    ]
    assert train_cli.main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["precision"] == precision
    # Well above chance (20%) and at least as good as raw pixels on the same episodes.
    accuracy = {m: r["accuracy"] for m, r in results["test"]["5-way 5-shot"].items()}
    assert accuracy["protonet"] > 0.6 and accuracy["protonet"] >= accuracy["pixels"] - 0.05


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),
        (frozenset({"avx2", "amx_bf16", "amx_tile"}), "bf16"),
        (frozenset({"avx2", "avx512f"}), "fp32"),  # bf16 would be emulated: slower than fp32
        (frozenset(), "fp32"),  # flags unreadable
    ],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], expected: str
) -> None:
    from metatl.training import device as device_module

    monkeypatch.setattr(device_module, "_cpu_flags", lambda: flags)
    assert device_module.resolve_precision("auto", "cpu") == expected
    assert device_module.resolve_precision("fp16", "cpu") == "fp16"  # only auto is resolved
    with device_module.autocast("cpu", "auto"):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    assert not device_module.grad_scaler(torch.device("cpu"), "auto").is_enabled()


def test_auto_precision_is_a_config_choice() -> None:
    from metatl.config import load_config

    assert load_config(None, ["precision=auto"]).precision == "auto"
