"""Write ``bench/mlperf/resnet_results.yaml`` from the official MLPerf Training result logs.

    git clone https://github.com/mlcommons/training_results_v0.6   # and v2.0, v3.0
    python bench/mlperf/extract.py --repo 0.6=training_results_v0.6 --repo 2.0=training_results_v2.0 \\
        --repo 3.0=training_results_v3.0 > bench/mlperf/resnet_results.yaml

A repo may be a checkout or a bare clone (files are read with ``git show HEAD:PATH``). For
each system below the script reads every ``result_*.txt`` (MLPerf's own log lines, both the
v0.6 ``:::MLL`` and the later ``:::MLLOG`` format) and keeps, per run: time to train
(``run_stop - run_start``), the epoch of the last eval, how many evals ran and how long
they took, and whether the run converged. A row's time to train is MLPerf's score: of the
five runs, drop the fastest and the slowest (a run that did not converge counts as the
slowest) and average the other three; its epochs and eval figures are the means of those
three. The system sheets (NVLink, HCAs) come from each round's ``NVIDIA/systems/*.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

# (round, folder under NVIDIA/results, hardware key): the ResNet-50 closed-division systems used.
SYSTEMS = [
    ("0.6", "dgx1_ngc19.05_mxnet", "dgx1"), ("0.6", "dgx1_n130_ngc19.05_mxnet", "dgx1"),
    ("0.6", "dgx2h_ngc19.05_mxnet", "dgx2h"), ("0.6", "dgx2h_n32_ngc19.05_mxnet", "dgx2h"),
    ("0.6", "dgx2h_n96_ngc19.05_mxnet", "dgx2h"),
    ("2.0", "dgxa100_ngc22.04_mxnet", "dgxa100"), ("2.0", "dgxa100_n8_ngc22.04_mxnet", "dgxa100"),
    ("2.0", "dgxa100_n128_ngc22.04_mxnet", "dgxa100"), ("2.0", "dgxa100_n527_ngc22.04_mxnet", "dgxa100"),
    ("3.0", "dgxh100_ngc23.04_mxnet", "dgxh100"), ("3.0", "dgxh100_n8_ngc23.04_mxnet", "dgxh100"),
    ("3.0", "dgxh100_n64_ngc23.04_mxnet", "dgxh100"), ("3.0", "dgxh100_n96_ngc23.04_mxnet", "dgxh100"),
]
# The fabric of each node type, as its system sheet states it (the file named in `source`).
HARDWARE = {
    "dgx1": {"gpu": "V100-SXM2-16GB", "gpus_per_node": 8, "nvlink_gbs": 150, "hcas": 4, "link_gbps": 100,
             "source": "training_results_v0.6 NVIDIA/systems/dgx1_n130_ngc19.05_mxnet.json: 4 network cards, "
                       "InfiniBand 100 Gb/sec (4X EDR); V100-SXM2 NVLink 300 GB/s both ways"},
    "dgx2h": {"gpu": "V100-SXM3-32GB-H", "gpus_per_node": 16, "nvlink_gbs": 150, "hcas": 8, "link_gbps": 100,
              "source": "training_results_v0.6 NVIDIA/systems/dgx2h_n32_ngc19.05_mxnet.json: InfiniBand 100 Gb/sec "
                        "(4X EDR), 10 cards of which 8 compute; NVSwitch, NVLink 300 GB/s both ways per GPU"},
    "dgxa100": {"gpu": "A100-SXM4-80GB", "gpus_per_node": 8, "nvlink_gbs": 300, "hcas": 8, "link_gbps": 200,
                "source": "training_results_v2.0 NVIDIA/systems/dgxa100_n8_ngc22.04_mxnet.json: Compute: 8x "
                          "ConnectX-6 IB HDR 200Gb/Sec; NVLINK 3.0, NVSWITCH 2.0 600GB/s"},
    "dgxh100": {"gpu": "H100-SXM5-80GB", "gpus_per_node": 8, "nvlink_gbs": 450, "hcas": 8, "link_gbps": 400,
                "source": "training_results_v3.0 NVIDIA/systems/dgxh100_n8_ngc23.04_mxnet.json: Compute: 8x "
                          "ConnectX-7 IB NDR 400Gb/s; NVLINK Gen4 900 GB/s + NVSWITCH Gen3"},
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, errors="replace",
                          check=True).stdout


def git_text(repo: Path, path: str) -> str:
    work = repo / path
    return work.read_text(errors="replace") if work.is_file() else git(repo, "show", f"HEAD:{path}")


def git_files(repo: Path, folder: str) -> list[str]:
    out = git(repo, "ls-tree", "--name-only", "HEAD", folder + "/")
    return sorted(line for line in out.split() if re.search(r"result_\d+\.txt$", line))


def events(text: str) -> list[tuple[float, str, dict]]:
    """(time, key, payload) of every MLPerf log line."""
    found = []
    for line in text.splitlines():
        old = re.search(r":::MLL (\d+\.?\d*) (\w+): (\{.*\})", line)
        try:
            if old:
                found.append((float(old.group(1)), old.group(2), json.loads(old.group(3))))
            elif ":::MLLOG " in line:
                record = json.loads(line.split(":::MLLOG ", 1)[1])
                found.append((record["time_ms"] / 1000, record["key"], record))
        except (ValueError, KeyError):
            continue
    return found


def one_run(text: str) -> dict:
    log = events(text)
    first = {}
    for when, key, payload in log:
        first.setdefault(key, (when, payload))
    stop = [(when, payload) for when, key, payload in log if key == "run_stop"][-1]
    starts, stops = {}, {}
    for when, key, payload in log:
        epoch = (payload.get("metadata") or {}).get("epoch_num")
        if key == "eval_start":
            starts[epoch] = min(starts.get(epoch, when), when)
        elif key == "eval_stop":
            stops[epoch] = max(stops.get(epoch, when), when)
    accuracy = [(payload["metadata"]["epoch_num"], payload["value"]) for _, key, payload in log
                if key == "eval_accuracy"]
    return {"time_to_train_s": round(stop[0] - first["run_start"][0], 3), "epochs": accuracy[-1][0],
            "evals": len(accuracy), "eval_s": round(sum(stops[e] - starts[e] for e in starts if e in stops), 3),
            "converged": (stop[1].get("metadata") or {}).get("status") == "success",
            "global_batch": first["global_batch_size"][1]["value"],
            "platform": first["submission_platform"][1]["value"]}


def scored(runs: list[dict]) -> list[dict]:
    """MLPerf's scoring: drop the fastest and the slowest run (one that did not converge is the slowest)."""
    ordered = sorted(runs, key=lambda run: (not run["converged"], run["time_to_train_s"]))
    return ordered[1:-1] if len(ordered) >= 3 else ordered


def row(round_: str, repo: Path, folder: str, hardware: str) -> dict:
    base = f"NVIDIA/results/{folder}/resnet"
    runs = [one_run(git_text(repo, path)) for path in git_files(repo, base)]
    kept = scored(runs)
    mean = lambda key: round(sum(run[key] for run in kept) / len(kept), 3)  # noqa: E731
    commit = git(repo, "rev-parse", "HEAD").strip()
    nodes = int(runs[0]["platform"].split("x", 1)[0])
    return {"round": round_, "submitter": "NVIDIA", "system": folder, "platform": runs[0]["platform"],
            "hardware": hardware, "nodes": nodes, "global_batch": runs[0]["global_batch"],
            "time_to_train_s": mean("time_to_train_s"), "epochs": mean("epochs"), "evals": mean("evals"),
            "eval_s": mean("eval_s"),
            "source": f"https://github.com/mlcommons/training_results_v{round_}/tree/{commit}/{base}",
            "runs": [{k: run[k] for k in ("time_to_train_s", "epochs", "converged")} for run in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", required=True, metavar="ROUND=PATH")
    args = parser.parse_args(argv)
    repos = dict(item.split("=", 1) for item in args.repo)
    rows = [row(r, Path(repos[r]), folder, hw) for r, folder, hw in SYSTEMS if r in repos]
    header = "# Generated by bench/mlperf/extract.py from the official result logs; do not edit by hand.\n"
    sys.stdout.write(header + yaml.safe_dump({"hardware": HARDWARE, "results": rows}, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
