"""Training-step throughput of the transformer recipe (target tokens/s) on synthetic token batches.

One step is what the training loop does per micro-batch and optimizer update: forward,
label-smoothed loss (:func:`jobs.tasks.translation.label_smoothed_loss`), backward, AdamW.
The batch is ``max_tokens // length`` pairs of random tokens, ``length`` each side.
Every run measures a baseline in the same process and reports the ratio: fp32 against
``--precision`` (default amp-bf16), or eager against ``--compile``. Rounds alternate
between the two settings and medians are reported::

    python bench/transformer_step.py                          # Transformer-big, cuda if present
    python bench/transformer_step.py --preset tiny --device cpu --threads 1
    python bench/transformer_step.py --precision amp-bf16 --compile   # compiled vs eager, both bf16

Anchors on GPUs (NVIDIA's published Transformer-big figures, AMP): about 82k tokens/s on
one A100, about 33-40k tokens/s on one V100.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.data.parallel_text import BOS_ID, EOS_ID, PAD_ID  # noqa: E402
from jobs.models.transformer import build_transformer  # noqa: E402
from jobs.tasks.translation import label_smoothed_loss  # noqa: E402
from orchestrator.spec.resolve import load_recipe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="a preset of recipes/transformer.yaml (tiny, base); default: Transformer-big")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "tf32", "amp-bf16", "amp-fp16"), default="amp-bf16")
    parser.add_argument("--compile", action="store_true", help="compare torch.compile against eager instead of fp32")
    parser.add_argument("--max-tokens", type=int, help="tokens per batch; default: the recipe's data.max_tokens")
    parser.add_argument("--length", type=int, default=32, help="tokens per sentence, each side")
    parser.add_argument("--vocab", type=int, help="default: the recipe's tokenizer.vocab_size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def synthetic_batch(pairs: int, length: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (pairs, length), generator=generator)
    tgt = torch.randint(4, vocab, (pairs, length), generator=generator)
    src[:, -1], tgt[:, -1] = EOS_ID, EOS_ID
    tgt_in = torch.cat([torch.full((pairs, 1), BOS_ID), tgt[:, :-1]], dim=1)
    return src.to(device), tgt_in.to(device), tgt.to(device)


def make_step(args: argparse.Namespace, precision: str, compiled: bool) -> tuple[Callable[[], None], int]:
    """A training-step closure for one setting, and the target tokens it processes."""
    recipe = load_recipe("transformer", args.preset, {})
    device = torch.device(args.device)
    vocab = args.vocab or recipe.data.tokenizer.vocab_size
    torch.manual_seed(0)
    model = build_transformer(recipe.model, vocab_size=vocab, pad_id=PAD_ID).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=recipe.optim.betas, eps=recipe.optim.eps,
                                  weight_decay=0.0, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    max_tokens = args.max_tokens or recipe.data.max_tokens
    src, tgt_in, tgt_out = synthetic_batch(max(1, max_tokens // args.length), args.length, vocab, device)
    ntokens = int(tgt_out.numel())
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    dtype = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "amp-fp16")

    def step() -> None:
        with autocast():
            logits = forward(src, tgt_in)
        loss = label_smoothed_loss(logits, tgt_out, recipe.train.label_smoothing, ntokens)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step, ntokens


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_round(step: Callable[[], None], ntokens: int, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * ntokens / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        settings = {"eager": (args.precision, False), "compiled": (args.precision, True)}
    else:
        settings = {"fp32": ("fp32", False), args.precision: (args.precision, False)}
    steps = {name: make_step(args, *setting) for name, setting in settings.items()}
    for step, _ in steps.values():
        for _ in range(args.warmup):
            step()
    rounds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (step, ntokens) in steps.items():
            rounds[name].append(timed_round(step, ntokens, args.steps, args.device))
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    baseline, other = list(medians)
    return {"preset": args.preset or "big", "device": args.device, "machine": machine(args.device),
            "tokens_per_step": steps[baseline][1], "length": args.length, "threads": torch.get_num_threads(),
            "rounds": rounds, "median_tok_s": medians, "ratio": f"{other} / {baseline}",
            "ratio_value": medians[other] / medians[baseline]}


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    for name, values in result["rounds"].items():
        rounds = ", ".join(f"{value:,.0f}" for value in values)
        print(f"{name:>9}: median {result['median_tok_s'][name]:,.0f} tok/s  (rounds: {rounds})")
    print(f"ratio {result['ratio']}: {result['ratio_value']:.2f}x  "
          f"[{result['preset']}, {result['tokens_per_step']} tokens/step, {result['device']}, {result['machine']}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
