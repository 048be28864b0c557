"""The bare PyTorch baseline of bench/launch_overhead.py: the tiny ResNet job without podrun.

    python bench/bare_tiny.py --steps 10 --out /tmp/bare.pt
    torchrun --nproc-per-node 2 bench/bare_tiny.py --steps 10 --out /tmp/bare.pt

The same model (podrun's own ResNet definition: the work, not the launcher), batch, SGD
and channels_last as the ``tiny`` preset on synthetic data: N training steps, one pass
over as many evaluation batches, one checkpoint written and fsynced by rank 0.
"""

import argparse
import os

import torch
import torch.distributed as dist

from jobs.models.config import ResNetConfig
from jobs.models.resnet import build_resnet

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--out", required=True)
args = parser.parse_args()
torch.set_num_threads(1)
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
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
