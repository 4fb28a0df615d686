"""How far fp32 BatchNorm gradients are from float64, contiguous against channels_last, on CPU.

    python benchmarks/batchnorm_accuracy.py

A train-mode ``BatchNorm2d(64)`` on ``[100, 64, H, W]`` inputs, backward of an upstream
gradient with a large component common to every position (as a loss that the normalisation
cancels, e.g. a prototype distance, hands down): the input gradient is then a small
difference of large sums, where the order and width of the accumulation shows. Prints, per
size and memory format, ``max |g - g64| / max |g64|`` of the input and weight gradients
against the same computation in float64.
"""

from __future__ import annotations

import torch


def gradients(x, upstream, memory_format, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and weight gradients of a fresh train-mode BatchNorm, as float64."""
    bn = torch.nn.BatchNorm2d(x.shape[1]).to(dtype).train()
    inputs = x.to(dtype).contiguous(memory_format=memory_format).detach().requires_grad_()
    bn(inputs).backward(upstream.to(dtype).contiguous(memory_format=memory_format))
    return inputs.grad.double(), bn.weight.grad.double()


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("| H = W | memory format | input grad rel. error | weight grad rel. error |")
    print("| --- | --- | --- | --- |")
    for size in (5, 10, 21, 42):
        x = torch.randn(100, 64, size, size, generator=gen) * 2 + 1
        upstream = torch.randn(100, 64, size, size, generator=gen) * 0.01 + 1
        exact = gradients(x, upstream, torch.contiguous_format, torch.float64)
        for name in ("contiguous", "channels_last"):
            fmt = getattr(torch, f"{name}_format" if name == "contiguous" else name)
            errors = [
                ((g - e).abs().max() / e.abs().max()).item()
                for g, e in zip(gradients(x, upstream, fmt, torch.float32), exact, strict=True)
            ]
            print(f"| {size} | {name} | {errors[0]:.1e} | {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
