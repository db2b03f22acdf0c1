"""Training randomness in the board's tests (benchmark.scoring.seed_draws): hand-checked, then simulated.

The simulation: two architectures with the same expected score, 5 outer folds, 3 seeds. Every
training run (seed x fold) is a new network, so it adds an offset N(0, TAU) to the latent score of
its fold's subjects, and a fresh per-image noise. The board averages each image over the seeds.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from benchmark.reporting import board_stats as bs
from benchmark.reporting import notes
from benchmark.scoring import ranking, stats
from benchmark.scoring.seed_draws import SeedDraws, seed_variance
from tests.benchmark import simulation as sim
from tests.benchmark.summaries import board, model_runs

FOLDS, SEEDS, TAU = 5, 3, 0.04  # TAU: per-seed SD of the mean about 0.01, as the README's real seeds


def test_seed_variance_is_the_variance_of_the_drawn_seeds_over_s():
    totals = np.array([[1.0, 2.0, 3.0]] * 3)
    weights = np.array([[1, 1, 1], [3, 0, 0], [2, 1, 0]]) / 3  # {1, 2, 3}, {1, 1, 1}, {1, 1, 2}
    assert seed_variance(totals, weights) == pytest.approx([1 / 3, 0.0, (1 / 3) / 3])


def test_observed_seed_variance_and_one_seed_models():
    per_seed = [np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]]), np.array([[0.5, 0.5]])]  # seed totals 3, 5, 7
    draws = SeedDraws.draw(per_seed, np.ones((4, 2)))
    assert draws.observed == pytest.approx([4 / 3, 0.0]) and draws.mixed[1] is None
    # every resample holds each subject once: its seed variance is that of the drawn seeds' totals,
    # 5 -+ 2, their deviations inflated by sqrt(3 / 2) (the draw's variance is then the unbiased one)
    inflated = 5.0 + np.sqrt(1.5) * np.array([-2.0, 0.0, 2.0])
    possible = {round(float(v), 9) for v in seed_variance(np.array([inflated] * 10), _all_draws())}
    assert {round(float(v), 9) for v in draws.resampled[:, 0]} <= possible
    assert (draws.resampled[:, 1] == 0).all()


def _all_draws() -> np.ndarray:
    grid = [(a, b, 3 - a - b) for a in range(4) for b in range(4 - a)]
    return np.array(grid, dtype=float) / 3


def test_identical_seeds_give_the_test_without_seeds():
    rng = np.random.default_rng(0)
    w = rng.integers(5, 80, 20).astype(float)
    totals = rng.random((3, 20)) * w
    boot = ranking.Resamples.draw(20, 2000, 0)
    plain = ranking.Pairs.compare(totals, w, boot)
    same = ranking.Pairs.compare(totals, w, boot, [np.stack([t] * 3) for t in totals])
    assert same.z == pytest.approx(plain.z) and same.marginal == pytest.approx(plain.marginal)
    assert same.seed_var == pytest.approx(np.zeros(3), abs=1e-12 * (totals.sum(axis=1) ** 2).max())


def test_seeds_that_disagree_as_whole_runs_weaken_the_test():
    """Each seed's networks shift every subject alike (a run offset, which subject resampling cannot
    see): the same seed means, a clear gap without seeds, none with them."""
    rng = np.random.default_rng(1)
    w = rng.integers(5, 80, 20).astype(float)
    mean = np.stack([w * 0.8, w * 0.73]) + rng.normal(0, 2.0, (2, 20))
    offsets = np.array([-0.04, 0.0, 0.04])[:, None] * w  # per seed, in proportion to the frames
    per_seed = [m + offsets for m in mean]
    boot = ranking.Resamples.draw(20, 2000, 0)
    plain, seeded = ranking.Pairs.compare(mean, w, boot), ranking.Pairs.compare(mean, w, boot, per_seed)
    assert plain.marginal[0] < 0.01 and seeded.marginal[0] > 0.05 and abs(seeded.z[0]) < abs(plain.z[0])
    assert seeded.seed_var[0] == pytest.approx(2 * (0.04 * w.sum()) ** 2 / 3)  # var of -a, 0, a over 3, twice


def test_simulated_training_noise_keeps_the_level_and_the_coverage():
    """Equal architectures are called different at most alpha of the time once the seeds are drawn
    with the subjects; resampling subjects alone (the trained networks held fixed) cannot hold it.
    The CI of an architecture's mean covers its truth (the expectation over training too)."""
    rng, reps, n = np.random.default_rng(5), 1000, 47
    offsets = np.random.default_rng(9).normal(0, TAU, 4000)  # a run's offset, integrated out
    truth = float(np.mean([sim.Model(shift=g).truth() for g in offsets]))
    seeded, fixed, covered = np.empty(reps, bool), np.empty(reps, bool), np.empty(reps, bool)
    for i in range(reps):
        models, subjects, sizes, _ = sim.draw_runs(rng, n, FOLDS, SEEDS, TAU)
        per_seed = [sim.totals(m, subjects, n) for m in models]
        totals = np.stack([p.mean(axis=0) for p in per_seed])
        boot = ranking.Resamples.draw(n, 1000, i)
        seeded[i] = ranking.Pairs.compare(totals, sizes.astype(float), boot, per_seed, i).marginal[0] < 0.05
        fixed[i] = ranking.Pairs.compare(totals, sizes.astype(float), boot).marginal[0] < 0.05
        _, lo, hi = stats.subject_bootstrap_ci(
            models[0].mean(axis=0), subjects, 1000, seed=i, seeds=models[0]
        )
        covered[i] = lo <= truth <= hi
    level, naive, coverage = float(seeded.mean()), float(fixed.mean()), float(covered.mean())
    print(
        f"equal architectures, {n} subjects, {FOLDS} folds x {SEEDS} seeds, run offset SD {TAU}: called "
        f"different {level:.3f} with seeds drawn ({naive:.3f} with the networks held fixed); "
        f"CI coverage {coverage:.3f}"
    )
    se = np.sqrt(0.05 * 0.95 / reps)
    assert level <= 0.05 + 2 * se and naive > 0.12  # the old way's excess is what this test can see
    assert coverage >= 0.93


def test_the_board_draws_each_models_seeds_with_the_subjects():
    """Two seeds per model whose networks disagree as whole runs (every subject shifted alike): the
    board's p-values are those of the pairs with the seeds drawn, and weaker than with the networks
    held fixed; the floor (no training) has no seeds to draw. From 20 subjects p vs floor is the
    (model, floor) pair's one-sided bootstrap-t."""
    rng = np.random.default_rng(3)
    subjects, fold_of = list(range(1, 21)), [0] * 10 + [1] * 10
    base = {"a": 0.8 + rng.normal(0, 0.03, 20), "b": 0.74 + rng.normal(0, 0.03, 20)}
    per_seed = {m: {0: (v - 0.06).tolist(), 1: (v + 0.06).tolist()} for m, v in base.items()}
    kw = {"subjects": subjects, "empty": [False] * 20, "fold_of": fold_of}
    b = board(*(model_runs(m, v, **kw) for m, v in per_seed.items()))
    rows = {r["model"]: r for r in b["rows"]}
    order = [r["model"] for r in b["rows"]]
    seeds = [
        np.array([per_seed[m][0], per_seed[m][1]]) if m in per_seed else np.zeros((1, 20)) for m in order
    ]
    boot = ranking.Resamples.draw(20, bs.N_SET, bs.SEED)
    totals = np.stack([s.mean(axis=0) for s in seeds])
    keys = [zlib.crc32(m.encode()) for m in order]  # each model's draws keyed by its name
    drawn = ranking.Pairs.compare(totals, np.ones(20), boot, seeds, bs.SEED, keys)
    fixed = ranking.Pairs.compare(totals, np.ones(20), boot)
    assert order == ["a", "b", "empty"] and rows["b"]["vs_top"]["p_unadjusted"] == pytest.approx(
        drawn.marginal[0]
    )
    assert fixed.marginal[0] < 0.01 < 0.05 < drawn.marginal[0]
    assert [rows[m]["vs_floor"]["p"] for m in "ab"] == pytest.approx(
        [drawn.one_sided(1, True), drawn.one_sided(2, True)]
    )
    # a model ranked above them changes no draw of theirs: a pair's own p stays as it was
    top = model_runs("c", {0: [0.95] * 20, 1: [0.97] * 20}, **kw)
    more = {r["model"]: r for r in board(*(model_runs(m, v, **kw) for m, v in per_seed.items()), top)["rows"]}
    assert [more[m]["vs_floor"]["p"] for m in "ab"] == [rows[m]["vs_floor"]["p"] for m in "ab"]
    assert "p vs floor (sign flips" not in notes.seeds_note(b)  # 20 subjects: its bootstrap draws seeds
