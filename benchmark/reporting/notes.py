"""The notes printed under the leaderboard's accuracy table: what the sample cannot show (too few
subjects for a test or a CI), which models do not clear the all-empty floor, what the board could
have detected, and what the seeds cover. Each is one line or None, a pure function of the board.
"""

from __future__ import annotations

from typing import Any

from benchmark.reporting import board_stats as bs
from benchmark.reporting import recipe
from benchmark.reporting.cells import fmt_p
from benchmark.scoring import ranking


def n_subjects(board: dict[str, Any]) -> int | None:
    return int(board["rows"][0]["vs_top"]["n_subjects"]) if board["rows"] else None


def _counted(n: int, word: str) -> str:
    """``1 subject``, ``4 subjects``."""
    return f"{n} {word}{'s' if n > 1 else ''}"


def _counted_once(board: dict[str, Any]) -> str:
    """' (subjects that share frames counted once)' on a board that linked some (``link_subjects``)."""
    h = board.get("header") or {}
    linked = h.get("link_subjects") == [True] and any(h.get("linked_subjects") or [])
    return " (subjects that share frames counted once)" if linked else ""


def resolution_note(board: dict[str, Any]) -> str | None:
    """Say so when too few subjects, or too many rows, make any significant difference impossible.

    With n subjects no sign-flip p can go below 2 / 2^n, >= 0.05 for n < ranking.MIN_SUBJECTS = 6,
    where the set keeps every model and the rank intervals span the board. The reader must see that
    this is a limit of the sample, not evidence that the models are equal.
    """
    n, k = n_subjects(board), len(board["rows"])
    pairs = k * (k - 1) // 2
    if n is not None and n >= ranking.MIN_SUBJECTS and pairs / (1 + bs.N_SET) >= bs.ALPHA:
        return (  # Bonferroni over the pairs: the smallest corrected p is pairs / (1 + resamples)
            f"With {k} rows ({pairs} pairs) no gap can be significant here: the smallest corrected p is "
            f"{pairs}/{1 + bs.N_SET} >= {bs.ALPHA}. Rank fewer models on one board."
        )
    if n is None or k < 2 or n >= ranking.MIN_SUBJECTS:
        return None
    return (
        f"With {_counted(n, 'subject')} no gap to the top can be significant here: p vs top "
        f"needs {ranking.MIN_SUBJECTS} subjects (a bootstrap of fewer tells nothing apart; even an exact "
        f"paired sign-flip p cannot go below 2/2^{n} = {2.0 / 2**n:.4f} >= {bs.ALPHA}). Every model is "
        "in the top group by lack of subjects, not by merit."
    )


def ci_note(board: dict[str, Any]) -> str | None:
    """Say why the board prints no CIs, or none in some columns: too few subjects for a subject
    bootstrap to hold 95% (a column of some images only, such as dice_positive, may have fewer)."""
    n = n_subjects(board)
    if n is None:
        return None
    if n < bs.MIN_CI_UNITS:
        who = f"{_counted(n, 'subject')}{_counted_once(board)}"
        return (
            f"No CIs: a subject-bootstrap interval from {who} covers the truth less often than it claims "
            "(simulated: 93% with 6 subjects, 87% with 4, 47% with 2), so intervals are shown from "
            f"{bs.MIN_CI_UNITS} subjects on (94% or more)."
        )
    metrics = [(key, m) for r in board["rows"] for key, m in r["metrics"].items()]
    short = sorted({key for key, m in metrics if m["mean"] is not None and m["lo"] is None})
    if not short:
        return None
    return (
        f"No CI in {', '.join(short)}: the images these columns average come from fewer than "
        f"{bs.MIN_CI_UNITS} subjects, too few for a subject-bootstrap interval to hold 95%."
    )


def _floor_row(board: dict[str, Any]) -> dict[str, Any] | None:
    """The all-empty floor's ranked row (None on a board without one)."""
    return next((r for r in board["rows"] if r["baseline"]), None)


def _floor_lead(board: dict[str, Any]) -> float | None:
    """How far the top row is above the all-empty floor's row (None without a floor row)."""
    floor = _floor_row(board)
    return None if floor is None else -float(floor["vs_top"]["diff"])


def power_note(board: dict[str, Any]) -> str | None:
    """What the board could have seen: the range of the rows' detectable gaps to the top, how many
    rows have none above the floor (an MDE larger than the top's lead over the floor would put the
    model below it), and where the MDE's 80% was checked (a review measured 39-50% at 8 subjects and
    9 rows)."""
    contenders = [r for r in board["rows"][1:] if not r["baseline"]]
    lead = _floor_lead(board)
    if not contenders or (n_subjects(board) or 0) < ranking.MIN_SUBJECTS or (lead is not None and lead <= 0):
        return None  # resolution_note says why below MIN_SUBJECTS; a floor on top leaves nothing above it
    mdes = [r["vs_top"]["mde"] for r in contenders]
    usable = [m for m in mdes if m is not None and (lead is None or m <= lead)]
    none = len(contenders) - len(usable)
    found = [m for m in usable if m > 0]  # 0: no spread in the differences, any gap would show
    if not usable:
        what = "no gap to the top that would leave a model above the floor"
    elif not found:
        what = "any true gap (no spread in the differences)"
    else:
        span = f"{min(found):.3f}" + (f" to {max(found):.3f}" if min(found) < max(found) else "")
        what = f"a true gap to the top of {span} (MDE column)"
    rest = (
        f"; for {none} of the {len(contenders)} rows only a gap that would put the model below the floor"
        if none and usable
        else ""
    )
    return (
        f"Power: with these {n_subjects(board)} subjects{_counted_once(board)} and the observed spread of "
        f"per-subject differences, p vs top would detect, with {bs.POWER:.0%} probability at alpha "
        f"{bs.ALPHA}, {what}{rest} (an approximation checked in simulation at 40 subjects and 2 models; "
        "with fewer subjects and more rows it detects less often than it states). Smaller gaps are likely "
        "to go unseen: 'yes' in the top group is not evidence of equality."
    )


def tests_disagree_note(board: dict[str, Any]) -> str | None:
    """Say so when p vs top and p vs floor disagree: the top shown above the floor while p vs top
    cannot separate the two, or a model shown above the floor with the floor's rank inside its rank
    interval. Two different tests: the two-sided bootstrap-t behind p vs top and the rank intervals,
    corrected over every pair, has less power on few subjects than the one-sided floor test."""
    floor, n = _floor_row(board), n_subjects(board) or 0
    if floor is None or floor["vs_top"]["p"] is None or n < ranking.MIN_SUBJECTS or resolution_note(board):
        return None  # a row-count limit or no subjects to test: resolution_note says so instead
    above = [r["model"] for r in board["rows"] if bs.beats_floor(r) and r["rank_ci"][1] >= floor["rank"]]
    unseparated = floor["vs_top"]["p"] >= bs.ALPHA and bool(bs.beats_floor(board["rows"][0]))
    if not unseparated and not above:
        return None
    first = (
        f"Shown above the floor by p vs floor, the top is not separated from it by p vs top (p "
        f"{fmt_p(floor['vs_top']['p'])})"
        if unseparated
        else "Shown above the floor by p vs floor, yet with the floor's rank in their rank interval: "
        + ", ".join(above)
    )
    exact = "exact, " if n < bs.FLOOR_BOOT_MIN else ""
    return (
        f"{first}. With {_counted(n, 'subject')}, p vs top and the rank intervals (two-sided, corrected "
        f"over all pairs) have less power than p vs floor (one-sided, {exact}Holm over the models only): "
        "where they disagree, the rank intervals and the top group say little."
    )


def floor_note(board: dict[str, Any]) -> str | None:
    """One line naming the models not shown to beat the all-empty floor (issue 20), or saying that the
    sample cannot show it for any model. Silent when every model clears it. (The one-sided floor test
    can be significant with fewer subjects than the two-sided tests of :func:`resolution_note`.)"""
    tested = [r for r in board["rows"] if r.get("vs_floor") is not None]
    below = [r for r in tested if not bs.beats_floor(r)]
    if not below:
        return None
    n = n_subjects(board) or 0
    limit = bs.floor_resolution(n, len(tested))
    if limit >= bs.ALPHA:
        return (
            f"With {_counted(n, 'subject')} and {_counted(len(tested), 'model')} "
            "no model can be shown to beat the all-empty "
            "floor: the smallest Holm-adjusted one-sided sign-flip p is at best "
            f"{len(tested)}/2^{n} = {limit:.4f} >= {bs.ALPHA}. A limit of the sample, not of the models."
        )
    parts = [f"{r['model']} ({r['vs_floor']['diff']:+.3f}, p {fmt_p(r['vs_floor']['p_holm'])})"
             for r in below]  # fmt: skip
    return (
        f"Not shown to beat the all-empty floor (gap to it; one-sided {floor_method(n)} p, Holm over the "
        f"models): {', '.join(parts)}. A model that has not learned where (or whether) the nerve is "
        "within its budget scores like predicting nothing."
    )


def floor_method(n: int) -> str:
    """The floor test's name for a board of n subjects (``board_stats.floor_tests``)."""
    return "paired sign-flip" if n < bs.FLOOR_BOOT_MIN else "bootstrap-t"


def seeds_note(board: dict[str, Any]) -> str:
    seeds = board["header"]["seeds"]
    if len(seeds) < 2:
        return (
            "One seed: the CIs, p-values, rank intervals and the top group are about these trained "
            "networks. They cover the sampling of test subjects, not training randomness (initialisation, "
            "augmentation), which one seed cannot measure; with two or more seeds (`seeds: [0, 1, 2]`) "
            "they cover both."
        )
    few = (
        " With 2 seeds that estimate has one degree of freedom and the tests run over their level "
        "(about 7% at a nominal 5% in simulation): 3 or more seeds hold it."
        if len(seeds) == 2
        else ""
    )
    return (
        f"{len(seeds)} seeds: every image is averaged over them. The CIs and tests draw each model's "
        "seeds (all outer folds of a seed together) inside every subject resample, and the seeds' "
        "variance joins each test's standard error, so they cover training randomness as well as the "
        f"sampling of subjects: Seed SD, its size, is estimated from {len(seeds)} seeds only.{few}"
        + (
            f" With fewer than {bs.FLOOR_BOOT_MIN} subjects p vs floor (sign flips of seed-averaged "
            "totals) leaves training randomness out."
            if (n_subjects(board) or 0) < bs.FLOOR_BOOT_MIN
            else ""
        )
    )


def notes(board: dict[str, Any]) -> list[str]:
    """The notes printed under the accuracy table."""
    empty = (
        None
        if board["rows"]
        else (
            "No model is ranked yet: a model is ranked once each of its seeds has a run of every outer fold "
            "(the incomplete ones are listed with what they miss)."
        )
    )
    found = [empty, resolution_note(board), ci_note(board), floor_note(board), tests_disagree_note(board)]
    found.append(power_note(board))
    found.append(seeds_note(board) if board["rows"] else None)
    found.append(recipe.note(board["header"].get("recipe") or {"per_model": {}}))
    return [n for n in found if n]
