"""What phase accounting (jobs/rank/phases.py) costs the training loop.

    python bench/phase_overhead.py --steps 200 --repeats 5

The only per-step work it adds is :meth:`jobs.rank.phases.PhaseClock.waiting` around the
loader (two ``perf_counter`` calls and a generator hop per batch); eval and checkpoint
timing happen once per epoch. Two measurements:

1. the wrapper alone over a list (nanoseconds per item);
2. the tiny preset's training step (podrun's ResNet, batch 32 at 32 px, SGD,
   channels_last, 1 thread) over pre-made batches, with and without the wrapper, in
   alternating rounds; medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from jobs.models.config import ResNetConfig
from jobs.models.resnet import build_resnet
from jobs.rank.phases import PhaseClock


def wrapper_ns(items: int) -> tuple[float, float]:
    """(plain loop, wrapped loop) in nanoseconds per item."""
    data = list(range(items))
    started = time.perf_counter_ns()
    for _ in data:
        pass
    plain = (time.perf_counter_ns() - started) / items
    clock = PhaseClock()
    started = time.perf_counter_ns()
    for _ in clock.waiting(data):
        pass
    return plain, (time.perf_counter_ns() - started) / items


def train_rate(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, wrapped: bool) -> float:
    """Steps per second over ``batches`` (the loader wrapped or not)."""
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    source = PhaseClock().waiting(batches) if wrapped else batches
    started = time.perf_counter()
    for images, labels in source:
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, wrapped = wrapper_ns(args.items)
    print(f"wrapper alone: {plain:.0f} ns/item plain, {wrapped:.0f} ns/item wrapped (+{wrapped - plain:.0f} ns)")
    model = build_resnet(ResNetConfig(layers=[1, 1, 1, 1], width=16, num_classes=10, small_stem=True))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.875)
    batches = [(torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (32,))) for _ in range(args.steps)]
    train_rate(model, optimizer, batches[:20], wrapped=False)  # warm-up
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for wrapped_loader in (False, True):
            rounds[wrapped_loader].append(train_rate(model, optimizer, batches, wrapped_loader))
    for wrapped_loader, rates in rounds.items():
        print(f"{'with' if wrapped_loader else 'without'} phases: " + ", ".join(f"{r:.1f}" for r in rates)
              + f" steps/s, median {statistics.median(rates):.1f}")
    ratio = statistics.median(rounds[True]) / statistics.median(rounds[False])
    print(f"ratio with/without: {ratio:.4f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
