"""``podrun predict --validate FILE``: the predictor against published results it was not fitted on.

The model has two constants that no single run measures: the per-step floor and the chunk
the allreduce's tree forwards level by level across nodes
(:func:`orchestrator.studies.predict_model.tree_fill_seconds`). For the rows of a round R
they are the pair (floor 0 to 20 ms in 0.1 ms steps, chunk 0 to 64 MiB in 4 MiB steps)
that minimises the median |error| of the multi-node rows of every *other* round with RCPs
in the pool (by default the published rows podrun ships,
``bench/mlperf/resnet_results.yaml``): leave-one-round-out. So no row is ever predicted
with constants fitted on its own round, whatever file it comes from. Rounds before 1.0 had
no RCPs: they are predicted and reported, never counted, and never in the pool (their
epochs term is wrong, docs/PREDICTION.md).
"""

from __future__ import annotations

import statistics
from importlib import metadata
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.studies.predict_mlperf import (
    FIRST_RCP_ROUND,
    RESULTS_FILE,
    TOLERANCE,
    Check,
    NodeType,
    ResultRow,
    ResultsFile,
    check_results,
    check_system,
    load_results,
    markdown_table,
    systems,
    within,
)

FLOOR_GRID_MS = tuple(step / 10 for step in range(201))  # 0 to 20 ms
CHUNK_GRID_MIB = tuple(float(size) for size in range(0, 65, 4))  # 0 to 64 MiB
Grid = dict[tuple[float, float], list[float] | None]  # (chunk, floor): the errors of a system's counted rows


def rounds_of(results: ResultsFile) -> list[str]:
    """The rounds of a file, oldest first."""
    keys = {row.round: row.round_key for row in results.results}
    return sorted(keys, key=keys.__getitem__)


def only(results: ResultsFile, keep) -> ResultsFile | None:
    """The rows for which ``keep(row)`` holds (None: none)."""
    rows = [row for row in results.results if keep(row)]
    return results.model_copy(update={"results": rows}) if rows else None


def system_grid(rows: list[ResultRow], node: NodeType) -> Grid:
    """One system's counted errors at each (chunk, floor) of the grids; None where a floor is longer than its
    calibration row's step allows (and every longer floor)."""
    grid: Grid = {}
    for chunk in CHUNK_GRID_MIB:
        too_long = False
        for floor in FLOOR_GRID_MS:
            if not too_long:
                try:
                    checks = check_system(rows, node, floor, chunk)
                except ConfigError:  # the floor is longer than the calibration row's step
                    too_long = True
            grid[chunk, floor] = None if too_long else [check.error for check in checks
                                                        if check.counted and check.error is not None]
    return grid


def pool_grids(pool: ResultsFile) -> list[tuple[str, Grid]]:
    """(round, :func:`system_grid`) of each system of the pool's rounds with RCPs (the only rows counted)."""
    fitted = only(pool, lambda row: row.round_key >= FIRST_RCP_ROUND)
    return [(rows[0].round, system_grid(rows, fitted.hardware[rows[0].hardware]))
            for rows in systems(fitted)] if fitted else []


def fit_constants(pool: ResultsFile, held: str | None = None,
                  grids: list[tuple[str, Grid]] | None = None) -> tuple[float, float]:
    """(floor ms, chunk MiB): the pair of the grids with the smallest median |error| over the counted rows of
    the pool's rounds other than ``held`` (the smallest chunk, then the smallest floor, on a tie).

    A floor that a calibration row's step cannot hold ends that chunk's search.

    Raises:
        ConfigError: the pool has no multi-node rows of a round with RCPs outside ``held``.
    """
    grids = [grid for round_, grid in (pool_grids(pool) if grids is None else grids) if round_ != held]
    best, best_error = (0.0, 0.0), float("inf")
    for chunk in CHUNK_GRID_MIB:
        for floor in FLOOR_GRID_MS:
            parts = [grid[chunk, floor] for grid in grids]
            if any(part is None for part in parts):
                break
            errors = [abs(error) for part in parts for error in part]
            if errors and statistics.median(errors) < best_error:
                best, best_error = (floor, chunk), statistics.median(errors)
    if best_error == float("inf"):
        raise ConfigError("no multi-node rows of rounds 1.0 and later to fit the step floor and the tree's chunk on"
                          + (f" outside round {held}" if held else ""))
    return best


def leave_one_round_out(results: ResultsFile, pool: ResultsFile) -> tuple[list[Check], list[Check]]:
    """Each round's rows with the floor and chunk fitted on the pool's other rounds; and the same rows with
    neither (no floor, a chunk of 0)."""
    checks, free, grids = [], [], pool_grids(pool)
    for round_ in rounds_of(results):
        rows = only(results, lambda row, kept=round_: row.round == kept)
        floor, chunk = fit_constants(pool, round_, grids)
        checks += check_results(rows, floor, chunk)
        free += check_results(rows, 0.0, 0.0)
    return checks, free


def rcp_release() -> str:
    """The installed mlperf-logging release, whose RCP files give the epochs."""
    try:
        return metadata.version("mlperf-logging")
    except metadata.PackageNotFoundError:
        return "not installed"


def validate_report(path: Path, pool_path: Path = RESULTS_FILE) -> str:
    """The table, how the constants were fitted and their values, the uncounted earlier rounds and, last,
    ``N of M within ±20%``.

    Raises:
        ConfigError: a file is missing or malformed, or the pool has nothing to fit on.
    """
    results, pool = load_results(path), load_results(pool_path)
    checks, free = leave_one_round_out(results, pool)
    early = [check for check in checks if check.multi_node and not check.counted]
    fitted = {check.row.round: (check.floor_ms, check.chunk_mib) for check in checks}
    lines = [markdown_table(checks, free),
             f"step floor and tree chunk of each round: the pair (floor {FLOOR_GRID_MS[0]:g}-{FLOOR_GRID_MS[-1]:g} ms "
             f"by {FLOOR_GRID_MS[1]:g}, chunk {CHUNK_GRID_MIB[0]:g}-{CHUNK_GRID_MIB[-1]:g} MiB by "
             f"{CHUNK_GRID_MIB[1]:g}) with the smallest median |error| over the multi-node rows of the other rounds "
             f"with RCPs in {_shown(pool_path)} (on a tie the smallest chunk, then the smallest floor)",
             "fitted, round: floor ms / chunk MiB: " + ", ".join(
                 f"{round_}: {floor:.1f} / {chunk:g}" for round_, (floor, chunk) in fitted.items()),
             f"epochs: RCPs of mlperf-logging {rcp_release()}"]
    if early:
        inside = sum(abs(check.error) <= TOLERANCE for check in early)
        lines.append(f"rounds before 1.0 (no RCPs, not counted): {inside} of {len(early)} within ±20%")
    counted_in, counted = within(checks)
    errors = [abs(check.error) for check in checks if check.counted and check.error is not None]
    lines.append("counted: the multi-node rows of rounds 1.0 and later" + (
        f"; median |error| {statistics.median(errors):.1%}, largest {max(errors):.1%}" if errors else ""))
    lines.append(f"{counted_in} of {counted} within ±20%")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path inside the repository relative to it (the report reads the same from any folder)."""
    try:
        return str(Path(path).resolve().relative_to(RESULTS_FILE.parents[2]))
    except ValueError:
        return str(path)


if __name__ == "__main__":  # python -m orchestrator.studies.predict_validate: podrun predict --validate, bundled rows
    print(validate_report(RESULTS_FILE))
