"""The bare PyTorch baseline of bench/launch_overhead.py: the tiny ResNet job without podrun.

    python bench/bare_tiny.py --steps 10 --out /tmp/bare.pt
    torchrun --nproc-per-node 2 bench/bare_tiny.py --steps 10 --out /tmp/bare.pt
    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python bench/bare_tiny.py ... &   # and RANK=1

The same model (podrun's own ResNet definition: the work, not the launcher), batch, SGD
and channels_last as the ``tiny`` preset on synthetic data: N training steps, one pass
over as many evaluation batches, one checkpoint written and fsynced by rank 0. Torch uses
``$OMP_NUM_THREADS`` threads (the benchmark gives it podrun's default: the cores over the
ranks). Rank 0's last line is ``bare timings {...}``: wall-clock times of the process start,
the end of its imports, of the rendezvous and of the work.
"""

import time

STARTED = time.time()

import argparse  # noqa: E402 - the clock starts before the imports it times
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from jobs.models.config import ResNetConfig  # noqa: E402
from jobs.models.resnet import build_resnet  # noqa: E402


def process_start() -> float:
    """When this process started (its exec, before the interpreter), from ``/proc``, as podrun's ranks read it."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return STARTED
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


imported = time.time()
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--out", required=True)
args = parser.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
rendezvous = time.time()
model = build_resnet(ResNetConfig(layers=[1, 1, 1, 1], width=16, num_classes=10, small_stem=True))
model = model.to(memory_format=torch.channels_last)
train_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.875)
images = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (32,))
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
for _ in range(args.steps):
    loss = loss_fn(train_model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
with torch.no_grad():
    correct = sum(float((model(images).argmax(1) == labels).sum()) for _ in range(args.steps))
if int(os.environ.get("RANK", "0")) == 0:
    with open(args.out, "wb") as handle:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
print(f"loss {loss.item():.4f} correct {correct:.0f}")
if world > 1:
    dist.destroy_process_group()
if int(os.environ.get("RANK", "0")) == 0:
    print("bare timings " + json.dumps({"start": process_start(), "imports": imported, "rendezvous": rendezvous,
                                        "work": time.time()}), flush=True)
