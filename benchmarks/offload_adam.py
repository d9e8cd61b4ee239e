"""The optimizer step of an offloaded student (`student.offload`), on the CPU that holds its
states: torch's fused AdamW, which cdscale uses, against DeepSpeed's CPU Adam, which it used
before 2026-12-06 and which DeepSpeed compiles (C++) on first use on every machine. One flat
fp32 tensor of SmolLM2-135M's size, the same gradient for both; also the foreach AdamW that
torch picks without `fused`.

    python -m benchmarks.offload_adam [--params 135e6] [--threads 2]
"""

import argparse

import torch

from benchmarks.common import Timer, machine


def step_seconds(optimizer: torch.optim.Optimizer, steps: int = 5) -> float:
    optimizer.step()  # the first step allocates the states
    with Timer() as t:
        for _ in range(steps):
            optimizer.step()
    return t.seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=135e6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    with Timer() as build:  # compiles the op on a machine without it in ~/.cache/torch_extensions
        DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(8))])
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(int(args.params), generator=generator) * 0.02
    grad = torch.randn(int(args.params), generator=generator) * 1e-3
    optimizers = {
        "torch AdamW, fused (cdscale)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True),
        "torch AdamW, foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True),
        "DeepSpeed CPU Adam": lambda ps: DeepSpeedCPUAdam(ps, lr=1e-3, weight_decay=0.01),
    }
    weights = {}
    print(f"{machine()}; {args.params / 1e6:.0f}M fp32 parameters, {args.threads} threads")
    print(f"DeepSpeed CPU Adam op load (a build if not cached): {build.seconds:.1f} s")
    for name, make in optimizers.items():
        param = torch.nn.Parameter(start.clone())
        param.grad = grad.clone()
        seconds = step_seconds(make([param]))
        weights[name] = param.detach()
        print(f"{name}: {seconds * 1000:.0f} ms per step")
    fused, deepspeed = weights["torch AdamW, fused (cdscale)"], weights["DeepSpeed CPU Adam"]
    print(f"largest weight difference, fused against DeepSpeed after 6 steps: {(fused - deepspeed).abs().max():.1e}")


if __name__ == "__main__":
    main()
