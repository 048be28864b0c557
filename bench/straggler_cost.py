"""What the straggler check (jobs/rank/stragglers.py) costs the training loop, against its step time.

    python bench/straggler_cost.py --steps 40 --repeats 3      # 2 gloo ranks on CPU, 1 thread each

The check's per-step work: :meth:`LocalClock.begin` and :meth:`LocalClock.ready` (two
``perf_counter`` calls on CPU, two CUDA event records on a GPU) and a DDP comm hook in Python
(:func:`ready_hook`) instead of DDP's built-in all-reduce. Per log window: the sum the log
boundary takes anyway grows from 1 number to ``1 + world_size``, and every rank compares the
figures (a median of ``world_size`` numbers). No collective of its own. Four measurements:

1. the clock's marks alone, on an empty body (ns per step);
2. the comparison of one window for 2 and for 1,536 ranks (µs per window);
3. the log boundary's all-reduce of 1 number against ``1 + 2`` numbers over 2 gloo ranks (µs);
4. the tiny preset's training step (podrun's ResNet, batch 32 at 32 px, SGD, channels_last,
   1 thread per rank) over 2 DDP ranks, with the check (hook, marks, the larger sum and the
   comparison at every log boundary) and without (DDP's built-in hook, the sum of 1 number), in
   alternating rounds: the median step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from jobs.contract.job import StragglerConfig
from jobs.contract.placement import free_port
from jobs.models.config import ResNetConfig
from jobs.models.resnet import build_resnet
from jobs.rank.dist import all_reduce_sum
from jobs.rank.stragglers import LocalClock, StragglerCheck, Stragglers


def marks_ns(steps: int) -> float:
    """``begin`` and ``ready`` around an empty body, a window read every 10 steps: ns per step."""
    clock = LocalClock()
    started = time.perf_counter_ns()
    for step in range(1, steps + 1):
        clock.begin()
        clock.ready()
        if step % 10 == 0:
            clock.window_s()
    return (time.perf_counter_ns() - started) / steps


def compare_us(world_size: int, windows: int = 200) -> float:
    """One window's comparison (ratios to the median, streaks) for ``world_size`` ranks: µs."""
    check = StragglerCheck(threshold=1.2, window=5)
    figures = [1.0 + (rank % 7) * 0.01 for rank in range(world_size)]
    started = time.perf_counter()
    for _ in range(windows):
        check.observe(figures)
    return (time.perf_counter() - started) / windows * 1e6


def sum_us(sizes: tuple[int, ...], device: torch.device, batches: int = 11, calls: int = 20) -> list[float]:
    """The log boundary's all-reduce of each of ``sizes`` numbers: µs per call, batches interleaved, medians."""
    found: dict[int, list[float]] = {size: [] for size in sizes}
    for batch in range(batches + 1):  # the first batch warms up
        for size in sizes:
            dist.barrier()
            started = time.perf_counter()
            for _ in range(calls):
                all_reduce_sum([1.0] * size, device)
            if batch:
                found[size].append((time.perf_counter() - started) / calls * 1e6)
    return [statistics.median(found[size]) for size in sizes]


def train_s(model, optimizer, batches, check: Stragglers | None, log_every: int, device: torch.device) -> float:
    """Seconds per step over ``batches``: the loop's step, its log boundary with or without the check."""
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    dist.barrier()
    started = time.perf_counter()
    for step, (images, labels) in enumerate(batches, start=1):
        if check:
            check.clock.begin()
        loss = loss_fn(model(images), labels)
        loss.backward()
        if check:
            check.clock.ready()
        optimizer.step()
        optimizer.zero_grad()
        if step % log_every == 0:
            float(loss.detach())
            slots = check.slots(len(labels), 0.0) if check else []
            _, *seconds = all_reduce_sum([float(len(labels)), *slots], device)
            if check:
                check.compare(seconds, step)
    dist.barrier()
    return (time.perf_counter() - started) / len(batches)


def rank_main(rank: int, port: int, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    device = torch.device("cpu")
    one, three = sum_us((1, 3), device)
    found: dict[str, object] = {"sum_1_us": one, "sum_3_us": three}
    check = Stragglers(StragglerConfig(), rank, 2, device, job_dir=".")
    models = {}
    for name in ("off", "on"):  # two models from the same seed: DDP's built-in all-reduce, and the check's hook
        torch.manual_seed(0)
        net = build_resnet(ResNetConfig(layers=[1, 1, 1, 1], width=16, num_classes=10, small_stem=True))
        model = DistributedDataParallel(net.to(memory_format=torch.channels_last))
        models[name] = (model, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.875), check if name == "on"
                        else None)
    check.attach(models["on"][0])
    batches = [(torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (32,))) for _ in range(args.steps)]
    rounds: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(args.repeats + 1):  # the first round of each warms up
        for name, (model, optimizer, checked) in models.items():
            seconds = train_s(model, optimizer, batches[:10] if repeat == 0 else batches, checked, args.log_every,
                              device)
            if repeat:
                rounds[name].append(seconds)
    found["rounds"] = rounds
    queue.put((rank, found))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each, alternating")
    parser.add_argument("--log-every", type=int, default=10, help="steps per log window (train.log_every)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"1. the clock's marks alone: {marks_ns(200_000):.0f} ns/step")
    print(f"2. one window's comparison: {compare_us(2):.1f} us for 2 ranks, {compare_us(1536):.0f} us for 1,536")
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    procs = [context.Process(target=rank_main, args=(rank, port, args, queue)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    found = dict(queue.get(timeout=1800) for _ in procs)
    for proc in procs:
        proc.join()
    head = found[0]
    print(f"3. the log boundary's sum over 2 gloo ranks: {head['sum_1_us']:.0f} us for 1 number, "
          f"{head['sum_3_us']:.0f} us for 3")
    rounds = head["rounds"]
    off, on = statistics.median(rounds["off"]), statistics.median(rounds["on"])
    print(f"4. tiny step, 2 DDP ranks, log every {args.log_every}, {args.steps} steps x {args.repeats} rounds "
          f"(rank 0): without the check {off * 1e3:.1f} ms, with it {on * 1e3:.1f} ms: {on / off:.3f}x")
    print("   rounds (ms): " + "; ".join(f"{name} " + " ".join(f"{s * 1e3:.1f}" for s in values)
                                        for name, values in rounds.items()))
    window_us = max(head["sum_3_us"] - head["sum_1_us"], 0.0) + compare_us(2)
    per_step = marks_ns(200_000) * 1e-9 + window_us * 1e-6 / args.log_every
    print(f"   the check's own work (1, and 2 + 3 once per window): {per_step * 1e6:.1f} us per step, "
          f"{per_step / off:.4%} of the step without it")
    print(f"   load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
