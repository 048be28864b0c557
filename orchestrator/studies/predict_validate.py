"""``podrun predict --validate FILE``: the predictor against published results it was not fitted on.

The model has one constant that no single run measures: the per-step floor. For the rows of
a round R it is the floor (0 to 20 ms, in 0.1 ms steps) that minimises the median |error|
of the multi-node rows of every *other* round with RCPs in the pool (by default the
published rows podrun ships, ``bench/mlperf/resnet_results.yaml``): leave-one-round-out.
So no row is ever predicted with a floor fitted on its own round, whatever file it comes
from. Rounds before 1.0 had no RCPs: they are predicted and reported, never counted, and
never in the pool (their epochs term is wrong, docs/PREDICTION.md).
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
    ResultsFile,
    check_results,
    load_results,
    markdown_table,
    within,
)

FLOOR_GRID_MS = tuple(step / 10 for step in range(201))  # 0 to 20 ms


def rounds_of(results: ResultsFile) -> list[str]:
    """The rounds of a file, oldest first."""
    keys = {row.round: row.round_key for row in results.results}
    return sorted(keys, key=keys.__getitem__)


def only(results: ResultsFile, keep) -> ResultsFile | None:
    """The rows for which ``keep(row)`` holds (None: none)."""
    rows = [row for row in results.results if keep(row)]
    return results.model_copy(update={"results": rows}) if rows else None


def median_error(pool: ResultsFile, floor_ms: float) -> float:
    """The median |error| of the pool's counted rows with this floor (inf: none)."""
    errors = [abs(check.error) for check in check_results(pool, floor_ms) if check.counted and check.error is not None]
    return statistics.median(errors) if errors else float("inf")


def fit_floor(pool: ResultsFile) -> float:
    """The floor of :data:`FLOOR_GRID_MS` with the smallest median |error| over the pool (the lowest on a tie).

    A floor the pool's calibration steps cannot hold ends the search.

    Raises:
        ConfigError: the pool has no multi-node rows of a round with RCPs.
    """
    best, best_error = 0.0, float("inf")
    for floor in FLOOR_GRID_MS:
        try:
            error = median_error(pool, floor)
        except ConfigError:  # the floor is longer than a calibration row's step
            break
        if error < best_error:
            best, best_error = floor, error
    if best_error == float("inf"):
        raise ConfigError("no multi-node rows of rounds 1.0 and later to fit the step floor on")
    return best


def leave_one_round_out(results: ResultsFile, pool: ResultsFile) -> tuple[list[Check], list[Check]]:
    """Each round's rows with the floor fitted on the pool's other rounds; and the same rows with no floor."""
    checks, free = [], []
    for round_ in rounds_of(results):
        rows = only(results, lambda row, kept=round_: row.round == kept)
        others = only(pool, lambda row, held=round_: row.round != held and row.round_key >= FIRST_RCP_ROUND)
        if others is None:
            raise ConfigError(f"no rounds other than {round_} with RCPs to fit the step floor on")
        checks += check_results(rows, fit_floor(others))
        free += check_results(rows, 0.0)
    return checks, free


def rcp_release() -> str:
    """The installed mlperf-logging release, whose RCP files give the epochs."""
    try:
        return metadata.version("mlperf-logging")
    except metadata.PackageNotFoundError:
        return "not installed"


def validate_report(path: Path, pool_path: Path = RESULTS_FILE) -> str:
    """The table, how the floors were fitted, the uncounted earlier rounds and, last, ``N of M within ±20%``.

    Raises:
        ConfigError: a file is missing or malformed, or the pool has nothing to fit on.
    """
    results, pool = load_results(path), load_results(pool_path)
    checks, free = leave_one_round_out(results, pool)
    early = [check for check in checks if check.multi_node and not check.counted]
    lines = [markdown_table(checks, free),
             f"step floor of each round: the one ({FLOOR_GRID_MS[0]:g}-{FLOOR_GRID_MS[-1]:g} ms) with the smallest "
             f"median |error| over the multi-node rows of the other rounds with RCPs in {_shown(pool_path)}",
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
