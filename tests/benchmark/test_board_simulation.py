"""End to end: simulated data -> run summaries -> the leaderboard aggregation -> the board's claims.

Each board holds two contenders with exactly the same image-weighted mean (one better on small
subjects, the other on big ones; tests/benchmark/simulation.py) over 20 subjects of 5-80 frames in
5 outer folds, and the all-empty floor derived from the truth. The summaries go through the same
builders as every leaderboard test (split.outer_indices included) and ``leaderboard.build`` does
the rest, so what is checked is what a user reads: the CIs cover the exact truth, p vs top keeps
its level, the top group keeps both models, the floor stays out of it.

The resample counts are lowered for speed (they set Monte Carlo precision, not the method), and
only the ranked column is aggregated.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.reporting import board_stats
from benchmark.reporting import leaderboard as lb
from tests.benchmark import simulation as sim
from tests.benchmark.summaries import model_runs

N_BOARDS, N_SUBJECTS = 150, 20


@pytest.fixture
def fast_board(monkeypatch):
    monkeypatch.setattr(board_stats, "N_BOOT", 1000)
    monkeypatch.setattr(board_stats, "N_SET", 1000)
    monkeypatch.setattr(lb, "OOF_METRICS", lb.OOF_METRICS[:1])  # kaggle_dice, the ranked column


def _board(rng: np.random.Generator, models: list[sim.Model]) -> dict:
    dice, subjects, _ = sim.draw(rng, models, N_SUBJECTS, float(rng.uniform(0.01, 0.06)))
    order = rng.permutation(N_SUBJECTS)  # subjects to folds at random, 4 per fold
    fold_of = (order[subjects] % 5).tolist()
    data = {"subjects": subjects.tolist(), "empty": (dice[0] == 1.0).tolist(), "fold_of": fold_of}
    runs = [s for name, d in zip("ab", dice) for s in model_runs(name, {0: d.tolist()}, **data)]
    return lb.build(runs)


def test_board_ci_type_one_error_and_top_group_from_summaries(fast_board):
    a, b = sim.matched(-0.05, BASE_TRUTH), sim.matched(0.05, BASE_TRUTH)
    rng = np.random.default_rng(81)
    covered, rejected, dropped, floor_ok = [], [], [], []
    for _ in range(N_BOARDS):
        board = _board(rng, [a, b])
        rows = {r["model"]: r for r in board["rows"]}
        assert not board["incomplete"] and list(rows) != [] and rows["empty"]["derived"]
        for name in "ab":
            m = rows[name]["metrics"]["kaggle_dice"]
            covered.append(m["lo"] <= BASE_TRUTH <= m["hi"])
        second = board["rows"][1] if not board["rows"][1]["baseline"] else board["rows"][0]
        rejected.append(second["vs_top"]["p"] is not None and second["vs_top"]["p"] < 0.05)
        dropped.append(not (rows["a"]["top_group"] and rows["b"]["top_group"]))
        floor_ok.append(rows["empty"]["top_group"] is None and rows["empty"]["rank_ci"] == [3, 3])
    coverage, type_one, set_error = np.mean(covered), np.mean(rejected), np.mean(dropped)
    se = np.sqrt(0.05 * 0.95 / N_BOARDS)
    print(
        f"leaderboard end to end ({N_BOARDS} boards, {N_SUBJECTS} subjects): CI coverage {coverage:.3f}, "
        f"p vs top type I {type_one:.3f}, top group drops an equal model {set_error:.3f}"
    )
    assert 0.92 <= coverage <= 0.99
    assert type_one <= 0.05 + 2 * se and set_error <= 0.05 + 2 * se
    assert np.mean(floor_ok) >= 0.99  # the floor: never a contender, last with certainty


BASE_TRUTH = sim.Model().truth()


def test_board_with_two_seeds_covers_training_randomness(fast_board):
    """Two architectures with the same expected score, 2 seeds, every run (seed x fold) shifting its
    fold by SD 0.04: through the summaries and ``leaderboard.build``, the CI covers the truth taken
    over training too, and p vs top keeps its level (the networks held fixed, it did not)."""
    tau, rng = 0.04, np.random.default_rng(29)
    offsets = np.random.default_rng(9).normal(0, tau, 4000)
    truth = float(np.mean([sim.Model(shift=g).truth() for g in offsets]))
    covered, rejected = [], []
    for _ in range(N_BOARDS):
        (a, b), subjects, _, fold_of = sim.draw_runs(rng, N_SUBJECTS, 5, 2, tau)
        data = {"subjects": subjects.tolist(), "empty": (a[0] == 1.0).tolist(),
                "fold_of": fold_of[subjects].tolist()}  # fmt: skip
        runs = [s for n, d in zip("ab", (a, b)) for s in model_runs(n, dict(enumerate(d.tolist())), **data)]
        board = lb.build(runs)
        m = next(r for r in board["rows"] if r["model"] == "a")["metrics"]["kaggle_dice"]
        covered.append(m["lo"] <= truth <= m["hi"])
        second = [r for r in board["rows"] if not r["baseline"]][1]
        rejected.append(second["vs_top"]["p"] < 0.05)
    coverage, type_one = float(np.mean(covered)), float(np.mean(rejected))
    print(
        f"two seeds, run offsets SD {tau}, {N_BOARDS} boards: coverage {coverage:.3f}, type I {type_one:.3f}"
    )
    assert coverage >= 0.92 and type_one <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / N_BOARDS)
