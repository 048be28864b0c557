"""What the phase clocks (jobs/rank/phases.py) cost the training loop, against its step time.

    python bench/phase_overhead.py --steps 200 --repeats 5                 # CPU, 1 thread
    python bench/phase_overhead.py --steps 200 --repeats 5 --device cuda   # CUDA events for compute

The clocks' per-step work: :meth:`jobs.rank.phases.PhaseClock.waiting` around the loader
(two ``perf_counter`` calls, a list append and a generator hop per batch) and ``with
clock.compute:`` around the step (two ``perf_counter`` calls and an append on CPU; two CUDA
event records on a GPU). At each log boundary (every ``--log-every`` steps) the loop reads
:meth:`~jobs.rank.phases.PhaseClock.window_compute_s`. Eval and checkpoint timing happen
once per epoch. Three measurements:

1. each clock alone, on an empty body (nanoseconds per batch or step);
2. the tiny preset's training step (podrun's ResNet, batch 32 at 32 px, SGD,
   channels_last; 1 thread on CPU) over pre-made batches, with every clock and without
   any, in alternating rounds: steps/s per round, medians and their ratio;
3. the clocks' cost per step (1.) as a share of the median step time (2.).

On a GPU the loss is read at each log boundary, as the loop does, so the events are read
once the device has caught up; round 2's steps time the device, not only the host.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from jobs.models.config import ResNetConfig
from jobs.models.resnet import build_resnet
from jobs.rank.phases import PhaseClock


def started_clock(device: torch.device) -> PhaseClock:
    clock = PhaseClock(device)
    clock.start_run({}, 0.0, time.time())
    return clock


def loader_ns(items: int, device: torch.device) -> tuple[float, float]:
    """(plain loop, loop through ``waiting``) in nanoseconds per item."""
    data = list(range(items))
    started = time.perf_counter_ns()
    for _ in data:
        pass
    plain = (time.perf_counter_ns() - started) / items
    clock = started_clock(device)
    started = time.perf_counter_ns()
    for _ in clock.waiting(data):
        pass
    return plain, (time.perf_counter_ns() - started) / items


def compute_ns(steps: int, log_every: int, device: torch.device) -> float:
    """``with clock.compute:`` around an empty body, plus a window read every ``log_every``: ns per step."""
    clock = started_clock(device)
    started = time.perf_counter_ns()
    for step in range(1, steps + 1):
        with clock.compute:
            pass
        if step % log_every == 0:
            clock.window_compute_s()
    spent = (time.perf_counter_ns() - started) / steps
    clock.totals()
    return spent


def train_rate(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, clocked: bool,
               log_every: int, device: torch.device) -> float:
    """Steps per second over ``batches``, with every per-step clock or with none."""
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    clock = started_clock(device) if clocked else None
    source = clock.waiting(batches) if clock else batches
    started = time.perf_counter()
    for step, (images, labels) in enumerate(source, start=1):
        with clock.compute if clock else contextlib.nullcontext():
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if step % log_every == 0:
            float(loss.detach())  # the loop's one sync, at a log boundary
            if clock:
                clock.window_compute_s()
    float(loss.detach())
    return len(batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--log-every", type=int, default=20, help="steps between window reads (train.log_every)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"device {device}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at the start")
    plain, wrapped = loader_ns(args.items, device)
    print(f"data_wait clock alone: {plain:.0f} ns/item plain, {wrapped:.0f} ns/item through it"
          f" (+{wrapped - plain:.0f} ns)")
    compute = compute_ns(args.items // 10, args.log_every, device)
    print(f"compute clock alone (window read every {args.log_every} steps): {compute:.0f} ns/step")

    model = build_resnet(ResNetConfig(layers=[1, 1, 1, 1], width=16, num_classes=10, small_stem=True))
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.875)
    batches = [(torch.randn(32, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (32,), device=device)) for _ in range(args.steps)]
    train_rate(model, optimizer, batches[:20], False, args.log_every, device)  # warm-up
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for clocked in (False, True):
            rounds[clocked].append(train_rate(model, optimizer, batches, clocked, args.log_every, device))
    for clocked, rates in rounds.items():
        print(f"{'with' if clocked else 'without'} clocks: " + ", ".join(f"{r:.1f}" for r in rates)
              + f" steps/s, median {statistics.median(rates):.1f}")
    ratio = statistics.median(rounds[True]) / statistics.median(rounds[False])
    step_ns = 1e9 / statistics.median(rounds[False])
    per_step = (wrapped - plain) + compute
    print(f"ratio with/without: {ratio:.4f}; clocks {per_step:.0f} ns per step = {100 * per_step / step_ns:.4f}% of"
          f" the median step ({step_ns / 1e6:.2f} ms); load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
