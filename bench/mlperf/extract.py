"""Write ``bench/mlperf/resnet_results*.yaml`` from the official MLPerf Training result logs.

    for v in 0.6 0.7 1.0 1.1 2.0 2.1 3.0 3.1 4.0; do
        git clone https://github.com/mlcommons/training_results_v$v; done
    REPOS=$(for v in 0.6 0.7 1.0 1.1 2.0 2.1 3.0 3.1 4.0; do echo --repo $v=training_results_v$v; done)
    python bench/mlperf/extract.py $REPOS > bench/mlperf/resnet_results.yaml
    python bench/mlperf/extract.py $REPOS --submitters 'Azure|Dell' > bench/mlperf/resnet_results_others.yaml

A repo may be a checkout or a bare clone (files are read with ``git show HEAD:PATH``). The
script takes every ``<submitter>/results/<system>/resnet`` folder of the submitters named
(by default NVIDIA and its joint submissions, such as ``NVIDIA_CoreWeave``) whose system
has a node type in ``NODE_TYPES`` (no round after 4.0 has ResNet-50 results). It
leaves out, and says so on stderr: a folder whose five runs an earlier round published
already (v2.1 repeats v2.0's DGX A100 runs), one whose logs it cannot read (a partial
copy), and a system that is the only one of its node type in its round (nothing to
predict). For each folder it reads every ``result_*.txt`` (MLPerf's own log lines, both
the v0.6 ``:::MLL`` and the later ``:::MLLOG`` format) and keeps, per run: time to train
(``run_stop - run_start``), the epoch of the last eval, how many evals ran and how long
they took, and whether the run converged. A row's time to train is MLPerf's score: of the
five runs, drop the fastest and the slowest (a run that did not converge counts as the
slowest) and average the other three; its epochs and eval figures are the means of those
three. ``nodes`` and ``stack`` are the system sheet's ``number_of_nodes`` and
``framework`` (``<submitter>/systems/<system>.json``). The fabric of each node type
(NVLink, HCAs) is transcribed from the system sheet named in its ``source``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

_DGXH100 = {"gpu": "H100-SXM5-80GB", "gpus_per_node": 8, "nvlink_gbs": 450, "hcas": 8, "link_gbps": 400}
# The fabric of each node type, as its system sheet states it (the file named in `source`).
HARDWARE = {
    "dgx1": {"gpu": "V100-SXM2-16GB", "gpus_per_node": 8, "nvlink_gbs": 150, "hcas": 4, "link_gbps": 100,
             "source": "training_results_v0.6 NVIDIA/systems/dgx1_n130_ngc19.05_mxnet.json: 4 network cards, "
                       "InfiniBand 100 Gb/sec (4X EDR); V100-SXM2 NVLink 300 GB/s both ways"},
    "dgx2h": {"gpu": "V100-SXM3-32GB-H", "gpus_per_node": 16, "nvlink_gbs": 150, "hcas": 8, "link_gbps": 100,
              "source": "training_results_v0.6 NVIDIA/systems/dgx2h_n32_ngc19.05_mxnet.json: InfiniBand 100 Gb/sec "
                        "(4X EDR), 10 cards of which 8 compute; NVSwitch, NVLink 300 GB/s both ways per GPU"},
    "dgxa100-40gb": {"gpu": "A100-SXM4-40GB", "gpus_per_node": 8, "nvlink_gbs": 300, "hcas": 8, "link_gbps": 200,
                     "source": "training_results_v0.7 NVIDIA/systems/dgxa100_n8_ngc20.06_mxnet.json: Compute: 8x "
                               "ConnectX-6 IB HDR 200Gb/Sec; NVLINK 3.0, NVSWITCH 2.0 600GB/s"},
    "dgxa100": {"gpu": "A100-SXM4-80GB", "gpus_per_node": 8, "nvlink_gbs": 300, "hcas": 8, "link_gbps": 200,
                "source": "training_results_v2.0 NVIDIA/systems/dgxa100_n8_ngc22.04_mxnet.json: Compute: 8x "
                          "ConnectX-6 IB HDR 200Gb/Sec; NVLINK 3.0, NVSWITCH 2.0 600GB/s"},
    "dgxh100": {**_DGXH100,
                "source": "training_results_v3.0 NVIDIA/systems/dgxh100_n8_ngc23.04_mxnet.json: Compute: 8x "
                          "ConnectX-7 IB NDR 400Gb/s; NVLINK Gen4 900 GB/s + NVSWITCH Gen3 (the same in the eos_* "
                          "sheets of v3.1 and v4.0 and in v3.0's NVIDIA_CoreWeave/systems/"
                          "coreweave_hgxh100_n448_ngc23.04_mxnet.json)"},
    "dgxh100-preview": {**_DGXH100,
                        "source": "training_results_v2.1 NVIDIA/systems/dgxh100_n4_preview.json leaves the fabric "
                                  "blank: the v3.0 DGX H100 sheet's (8x NDR 400Gb/s, NVLink Gen4 900 GB/s) assumed"},
    "l40s": {"gpu": "L40S", "gpus_per_node": 4, "nvlink_gbs": 32, "hcas": 2, "link_gbps": 400,
             "source": "training_results_v4.0 NVIDIA/systems/l40s_n16_ngc24.04_mxnet.json: BF3 200Gbps for NS and "
                       "2xBF3 400Gbps for EW; PCIe Gen4 between GPUs (x16: 32 GB/s one way)"},
}


def _sheet(gpu: str, gpus: int, nvlink_gbs: float, hcas: int, link_gbps: float, source: str) -> dict:
    return {"gpu": gpu, "gpus_per_node": gpus, "nvlink_gbs": nvlink_gbs, "hcas": hcas, "link_gbps": link_gbps,
            "source": source}


_PCIE = "no NVLink (PCIe Gen4 x16: 32 GB/s one way)"
# Other submitters' node types (--submitters 'Azure|Dell'): NVIDIA's GPUs and MXNet stack on other clusters.
OTHER_HARDWARE = {
    "azure-nd96amsr-a100-v4": _sheet(
        "A100-SXM4-80GB", 8, 300, 8, 200, "training_results_v1.1 Azure/systems/nd96amsr_a100_v4_n8_ngc21.09_mxnet.json:"
        " Compute: 8x ConnectX-6 IB HDR 200Gb/Sec; NVLINK 3.0, NVSWITCH 2.0 600GB/s"),
    "dell-dss8440-a100-pcie-40gb": _sheet(
        "A100-PCIE-40GB", 8, 32, 1, 100,
        f"training_results_v1.0 Dell/systems/2xDSS8440x8A100-PCIE-40GB.json: 1x ConnectX-5 IB EDR 100Gb/Sec; {_PCIE}"),
    "dell-xe8545-a100-40gb": _sheet(
        "A100-SXM4-40GB", 4, 300, 2, 200,
        "training_results_v2.0 Dell/systems/2xXE8545x4A100-SXM-40GB.json: 2x ConnectX-6 IB HDR 200Gb/Sec; NVLink 3.0 "
        "600GB/s"),
    "dell-xe8545-a100-80gb": _sheet(
        "A100-SXM4-80GB", 4, 300, 2, 200,
        "training_results_v1.0 Dell/systems/2xXE8545x4A100-SXM-80GB.json: 2x ConnectX-6 IB HDR 200Gb/Sec; NVLink 3.0 "
        "600GB/s"),
    "dell-r750xa-a100-pcie-80gb": _sheet(
        "A100-PCIE-80GB", 4, 32, 1, 100,
        f"training_results_v1.1 Dell/systems/2xR750xax4A100-PCIE-80GB.json: 1x ConnectX-5 IB EDR 100Gb/Sec; {_PCIE}"),
    "dell-xe9680-a100-80gb": _sheet(
        "A100-SXM4-80GB", 8, 300, 8, 400,
        "training_results_v3.0 Dell/systems/2xXE9680x8A100-SXM-80GB.json: 8x ConnectX-7 IB NDR 400Gb/Sec; "
        "12xNVLink 25GB/s + 6xNVSwitch"),
    "dell-xe9680-h100": _sheet(
        "H100-SXM5-80GB", 8, 450, 8, 400,
        "training_results_v3.0 Dell/systems/2xXE9680x8H100-SXM-80GB.json: 8x ConnectX-7 IB NDR 400Gb/Sec; "
        "18xNVLink 25GB/s + 4xNVSwitch"),
    "dell-xe8640-h100": _sheet(
        "H100-SXM5-80GB", 4, 450, 4, 400,
        "training_results_v3.1 Dell/systems/2xXE8640x4H100-SXM-80GB.json: 4x ConnectX-7 IB NDR 400Gb/Sec; "
        "NVLink Gen4 900GB/s"),
}
SUBMITTERS = r"NVIDIA(_\w+)?"  # default: NVIDIA's own results and its joint ones (NVIDIA_CoreWeave in v3.0)
# (submitter, round, system folder under <submitter>/results, node type): patterns, the first match wins. Other
# folders are left out: NVIDIA's systems with one result in their round (dgx2 in v0.6, 2xa30, h200), other GPUs
# (A30, PCIe H100, L40S), Dell's PCIe systems with NVLink bridges or Omni-Path, and the TPUs, IPUs and Gaudis.
NODE_TYPES = [
    ("NVIDIA.*", r"0\.6", r"dgx1_", "dgx1"), ("NVIDIA.*", r"0\.[67]", r"dgx2h_", "dgx2h"),
    ("NVIDIA.*", r"0\.7", r"dgxa100_", "dgxa100-40gb"), ("NVIDIA.*", r".*", r"dgxa100_", "dgxa100"),
    ("NVIDIA.*", r"2\.1", r"dgxh100_.*preview", "dgxh100-preview"),
    ("NVIDIA.*", r".*", r"(dgxh100|eos|coreweave_hgxh100)_", "dgxh100"), ("NVIDIA.*", r".*", r"l40s_", "l40s"),
    ("Azure", r".*", r"(?i)nd96amsr_a100_v4(_n\d+)?(_ngc[\d.]+)?_mxnet$", "azure-nd96amsr-a100-v4"),
    ("Dell", r".*", r"(\d+x)?DSS8440x8A100-PCIE-40GB$", "dell-dss8440-a100-pcie-40gb"),
    ("Dell", r".*", r"(\d+x)?XE8545x4A100-SXM-40GB$", "dell-xe8545-a100-40gb"),
    ("Dell", r".*", r"(\d+x)?XE8545x4A100-SXM-80GB$", "dell-xe8545-a100-80gb"),
    ("Dell", r".*", r"(\d+x)?R750xax4A100-PCIE-80GB$", "dell-r750xa-a100-pcie-80gb"),
    ("Dell", r".*", r"(\d+x)?XE9680x8A100-SXM-80GB$", "dell-xe9680-a100-80gb"),
    ("Dell", r".*", r"(\d+x)?XE9680x8H100-SXM-80GB$", "dell-xe9680-h100"),
    ("Dell", r".*", r"(\d+x)?XE8640x4H100-SXM-80GB$", "dell-xe8640-h100"),
]


def node_type(submitter: str, round_: str, folder: str) -> str | None:
    """The HARDWARE key of a results folder, or None for a system the check leaves out."""
    return next((kind for who, rounds, pattern, kind in NODE_TYPES
                 if re.fullmatch(who, submitter) and re.fullmatch(rounds, round_) and re.match(pattern, folder)),
                None)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, errors="replace",
                          check=True).stdout


def git_text(repo: Path, path: str) -> str:
    work = repo / path
    return work.read_text(errors="replace") if work.is_file() else git(repo, "show", f"HEAD:{path}")


def git_files(repo: Path, folder: str) -> list[str]:
    out = git(repo, "ls-tree", "--name-only", "HEAD", folder + "/")
    return sorted(line for line in out.split() if re.search(r"result_\d+\.txt$", line))


def result_folders(repo: Path, submitters: str) -> list[tuple[str, str]]:
    """(submitter, system) of every ResNet-50 result in a round whose submitter matches ``submitters``."""
    submitters = [name for name in git(repo, "ls-tree", "-d", "--name-only", "HEAD").split()
                  if re.fullmatch(submitters, name)]
    found = []
    for submitter in submitters:
        out = git(repo, "ls-tree", "-d", "--name-only", "HEAD", f"{submitter}/results/")
        found += [(submitter, path.rsplit("/", 1)[1]) for path in out.split() if git_files(repo, f"{path}/resnet")]
    return found


def system_sheet(repo: Path, submitter: str, folder: str) -> dict:
    """The system's ``<submitter>/systems/<system>.json``, or {} without one."""
    try:
        return json.loads(git_text(repo, f"{submitter}/systems/{folder}.json"))
    except (subprocess.CalledProcessError, ValueError):
        return {}


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


def row(round_: str, repo: Path, submitter: str, folder: str, hardware: str) -> dict:
    base = f"{submitter}/results/{folder}/resnet"
    runs = [one_run(git_text(repo, path)) for path in git_files(repo, base)]
    kept = scored(runs)
    mean = lambda key: round(sum(run[key] for run in kept) / len(kept), 3)  # noqa: E731
    commit = git(repo, "rev-parse", "HEAD").strip()
    sheet = system_sheet(repo, submitter, folder)
    nodes = int(sheet.get("number_of_nodes") or runs[0]["platform"].split("x", 1)[0])
    return {"round": round_, "submitter": submitter, "system": folder, "platform": runs[0]["platform"],
            "hardware": hardware, "stack": sheet.get("framework", ""), "nodes": nodes,
            "global_batch": runs[0]["global_batch"], "time_to_train_s": mean("time_to_train_s"),
            "epochs": mean("epochs"), "evals": mean("evals"), "eval_s": mean("eval_s"),
            "source": f"https://github.com/mlcommons/training_results_v{round_}/tree/{commit}/{base}",
            "runs": [{k: run[k] for k in ("time_to_train_s", "epochs", "converged")} for run in runs]}


def rows_of(repos: dict[str, str], submitters: str = SUBMITTERS) -> list[dict]:
    """The rows of every round given, oldest first; results already published in an earlier round are skipped."""
    rows, seen = [], {}
    for round_ in sorted(repos, key=lambda r: tuple(int(p) for p in r.split("."))):
        repo = Path(repos[round_])
        for submitter, folder in result_folders(repo, submitters):
            kind = node_type(submitter, round_, folder)
            if kind is None:
                print(f"v{round_} {submitter}/{folder}: left out (no node type in NODE_TYPES)", file=sys.stderr)
                continue
            try:
                found = row(round_, repo, submitter, folder, kind)
            except subprocess.CalledProcessError as exc:  # a partial copy may lack large logs
                print(f"v{round_} {submitter}/{folder}: left out, a log is unreadable ({exc.stderr.strip()})",
                      file=sys.stderr)
                continue
            runs = json.dumps(found["runs"])
            if runs in seen:
                print(f"v{round_} {submitter}/{folder}: the same runs as v{seen[runs]}, left out", file=sys.stderr)
                continue
            seen[runs] = round_
            rows.append(found)
    return with_company(rows)


def with_company(rows: list[dict]) -> list[dict]:
    """The rows whose round and node type have another row: a system with one result leaves nothing to predict."""
    count: dict[tuple[str, str], int] = {}
    for found in rows:
        count[found["round"], found["hardware"]] = count.get((found["round"], found["hardware"]), 0) + 1
    for found in rows:
        if count[found["round"], found["hardware"]] == 1:
            print(f"v{found['round']} {found['submitter']}/{found['system']}: left out, the only result of its "
                  "node type in its round", file=sys.stderr)
    return [found for found in rows if count[found["round"], found["hardware"]] > 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", required=True, metavar="ROUND=PATH")
    parser.add_argument("--submitters", default=SUBMITTERS, help=f"a pattern of submitter folders ({SUBMITTERS})")
    args = parser.parse_args(argv)
    rows = rows_of(dict(item.split("=", 1) for item in args.repo), args.submitters)
    used = {kind: sheet for kind, sheet in (HARDWARE | OTHER_HARDWARE).items()
            if any(r["hardware"] == kind for r in rows)}
    header = "# Generated by bench/mlperf/extract.py from the official result logs; do not edit by hand.\n"
    sys.stdout.write(header + yaml.safe_dump({"hardware": used, "results": rows}, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
