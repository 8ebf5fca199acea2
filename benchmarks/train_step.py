"""Time and peak memory of one training step of a config (the paper's by default).

python benchmarks/train_step.py [--config configs/paper.yaml] [--batch 4] [--steps 10]
                                [--grad-checkpointing] [--compile] [--device auto|cpu|cuda]

Builds the config's model with random weights (a step costs the same with the OpenAI
weights, and nothing is downloaded), the full image encoder trainable as configured,
schedule-free AdamW as scrapscan-train sets it up, and runs the training loop's own step
(training.train.train_step: bf16 autocast on a GPU, focal + dice over the stages and MSM)
on random batches at the config's input size. Prints the machine, the trainable
parameters, the median step time after two warm-up steps and, on a GPU, the peak memory
allocated. --compile runs the model through torch.compile (the losses stay eager).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from tools.bench import machine
from training.config import load_config
from training.distributed import pick_device
from training.model import build_model
from training.train import make_optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "paper.yaml")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)

    cfg = load_config(args.config)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})})
    device = torch.device(pick_device(args.device))
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    model.grad_checkpointing = args.grad_checkpointing
    optimizer = make_optimizer(model, cfg)
    net = torch.compile(model) if args.compile else model
    model.train()
    optimizer.train()
    size = cfg.model.input_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    masks = torch.zeros(args.batch, size, size, dtype=torch.long)
    masks[:, size // 3 : size // 2, size // 3 : size // 2] = 1  # some anomaly in each patch
    masks = masks.to(device)
    weights = torch.ones(4, device=device)
    cuda = device.type == "cuda"
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.train.bf16 else nullcontext()
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(args.steps + 2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        parts = train_step(net, optimizer, images, masks, weights, cfg, autocast, k)
        if cuda:
            torch.cuda.synchronize()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    n_params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"machine: {machine()}")
    print(
        f"config {args.config.name}: batch {args.batch} at {size} px, {n_params / 1e6:.1f} M "
        f"trainable parameters, grad checkpointing {'on' if args.grad_checkpointing else 'off'}, "
        f"{'compiled' if args.compile else 'eager'}, "
        f"{'bf16 autocast' if cuda and cfg.train.bf16 else 'fp32'} on {device.type}"
    )
    print(
        f"step: median {1000 * statistics.median(times):.1f} ms over {len(times)} steps "
        f"(last loss {parts['loss']:.4f})"
    )
    if cuda:
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
