"""Hand-made schema-2 summary.json dicts for leaderboard, report, runner and tracking tests.

``make_summary`` builds one run; ``model_runs`` builds a model's K outer folds x seeds from one
per-image Dice vector per seed over the small data set below (8 images, 4 subjects, 2 folds), or
over any data set given as per-image subjects, empty flags and folds (the simulations use that).
Like finalize.split_block, every run records the sorted indices of its outer fold
(``split.outer_indices``) and the data set's size (``dataset.n_train``): the leaderboard checks
each seed's coverage against them.
"""

from __future__ import annotations

import numpy as np

from benchmark.core.config import SCHEMA_VERSION, TrainConfig

# The toy data set: image i belongs to SUBJECTS[i], has an empty truth when EMPTY[i], lies in FOLD_OF[i].
SUBJECTS = [1, 1, 2, 2, 3, 3, 4, 4]
EMPTY = [True, False, True, False, False, True, False, True]
FOLD_OF = [0, 0, 0, 0, 1, 1, 1, 1]


def fold_rows(subjects=SUBJECTS, empty=EMPTY, fold_of=FOLD_OF) -> list[dict]:
    """The split's fold table as splits.fold_table writes it."""
    rows = []
    for fold in sorted(set(fold_of)):
        members = [i for i, f in enumerate(fold_of) if f == fold]
        rows.append({"fold": fold, "subjects": sorted({subjects[i] for i in members}),
                     "n_images": len(members),
                     "positive_fraction": float(np.mean([not empty[i] for i in members]))})  # fmt: skip
    return rows


def _per_image(dice, index, subjects, empty) -> dict:
    return {"index": index, "stem": [f"{s}_{i}" for s, i in zip(subjects, index)], "subject": subjects,
            "true_empty": empty, "dice_raw": [max(d - 0.1, 0.0) for d in dice], "dice": dice,
            "iou": [d / (2 - d) for d in dice], "presence_prob": [0.5] * len(dice)}  # fmt: skip


def _post_metrics(dice: list[float], empty: list[bool]) -> dict:
    """The post-processed outer-fold metrics of per-image ``dice`` (the pooled ones fixed)."""
    positives = [d for d, e in zip(dice, empty) if not e]
    return {
        "kaggle_dice": float(np.mean(dice)),
        "dice_positive": float(np.mean(positives)) if positives else None,
        "iou": float(np.mean([d / (2 - d) for d in dice])),
        "sensitivity": 0.5, "precision": 0.25, "f1": 1 / 3, "presence_accuracy": 0.75, "pixel_accuracy": 0.98,
    }  # fmt: skip


def make_summary(
    model, fold, seed, dice, *, empty=None, index=None, subjects=None, folds=None, extra=None, cost=True,
    n_folds=5, content="c0ffee", selection=0.9, global_batch=16, mode="kfold", outer_indices=None,
    synthetic=True,
):  # fmt: skip
    """A schema-2 summary whose outer-fold per-image Dice is ``dice`` (metrics derived from it exactly).

    By default image i of fold f has index f * len(dice) + i, so that K such folds cover the data
    set's K * len(dice) images; ``outer_indices`` (default: the scored indices) is what the split says
    the fold holds.
    """
    holdout = 0.5 if mode == "holdout" else None  # hold-out: the split says fold 0 of 1
    cfg = TrainConfig(model=model, fold=fold, seed=seed, n_folds=max(n_folds, 2), holdout_fraction=holdout,
                      image_size=64, epochs=2)  # fmt: skip
    dice = [float(d) for d in dice]
    empty = [False] * len(dice) if empty is None else list(empty)
    index = [len(dice) * fold + i for i in range(len(dice))] if index is None else list(index)
    outer_indices = sorted(index) if outer_indices is None else list(outer_indices)
    subjects = [1] * len(dice) if subjects is None else list(subjects)
    folds = [{"fold": f, "subjects": [1], "n_images": len(dice), "positive_fraction": 0.5}
             for f in range(n_folds)] if folds is None else folds  # fmt: skip
    post = {**_post_metrics(dice, empty), **(extra or {})}
    outer = sorted(set(subjects))
    return {
        "schema_version": SCHEMA_VERSION, "run": cfg.run_name(), "model": model, "fold": fold,
        "n_folds": n_folds, "seed": seed, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "dataset": {"name": "synth", "n_train": sum(f["n_images"] for f in folds), "n_subjects": 4,
                    "n_fit": 2 * len(dice) - 1 - fold, "n_inner": 1 + fold, "n_outer": len(dice),
                    "content_hash": content, "synthetic": synthetic},  # fit/inner sizes differ per run
        "best_epoch": 1, "epochs_run": 2, "train_time_s": 10.0 + fold,
        "metrics": {"raw": {"kaggle_dice": float(np.mean(dice)) - 0.1}, "post": post},
        "selection": {"metrics": {"raw": {"kaggle_dice": selection - 0.1},
                                  "post": {"kaggle_dice": selection}},
                      "n_images": 2, "subjects": [99], "best_epoch": 1, "select": "best"},
        "split": {"mode": mode, "split_seed": 0, "n_folds": n_folds, "fold": fold, "inner_fraction": 0.15,
                  "holdout_fraction": holdout,
                  "outer_subjects": outer, "inner_subjects": [99], "fit_subjects": [98], "folds": folds,
                  "outer_indices": outer_indices},
        "global_batch": global_batch, "world_size": 1,
        "per_image": _per_image(dice, index, subjects, empty),
        "postprocess": {"threshold": 0.5, "min_area": 0, "presence_tau": 0.0, "presence_source": "max_prob",
                        "tta": False},
        "cost": ({"params": 1000, "gflops": 0.5, "train_img_s": 20.0, "infer_img_s": 40.0, "latency_ms": 3.0,
                  "peak_mem_mb": 100.0, "measured": {"device": "cpu", "device_share": None,
                                                     "inference": "exclusive"}} if cost else {}),
        "history": {"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [0.9, 0.6],
                    "val_kaggle_dice": [0.4, selection]},
        "overlays": "overlays.npz",
        "environment": {"python": "3.11", "torch": "2.x", "lightning": "2.x", "smp": "0.6", "timm": "1.0",
                        "device": "cpu", "git_sha": "abc123", "platform": "linux"},
        "status": "complete",
    }  # fmt: skip


def model_runs(
    model, dice_by_seed, *, skip=(), subjects=SUBJECTS, empty=EMPTY, fold_of=FOLD_OF, **kwargs
) -> list[dict]:
    """Every (fold, seed) run of ``model``; ``dice_by_seed[seed]`` has one Dice per image of the data set.

    The data set defaults to the toy one above; ``skip`` lists (fold, seed) runs to leave out.
    """
    n_folds, table = len(set(fold_of)), fold_rows(subjects, empty, fold_of)
    members = {fold: [i for i, f in enumerate(fold_of) if f == fold] for fold in range(n_folds)}
    runs = []
    for seed, dice in dice_by_seed.items():
        for fold in range(n_folds):
            if (fold, seed) in skip:
                continue
            own = members[fold]
            runs.append(make_summary(
                model, fold, seed, [dice[i] for i in own], index=own, n_folds=n_folds,
                subjects=[subjects[i] for i in own], empty=[empty[i] for i in own], folds=table, **kwargs,
            ))  # fmt: skip
    return runs


def empty_runs(seeds=(0,), **kwargs) -> list[dict]:
    """The `empty` baseline's runs: Dice 1 on an empty truth, 0 elsewhere."""
    return model_runs("empty", {s: [1.0 if e else 0.0 for e in EMPTY] for s in seeds}, **kwargs)


# Hand-made per-image Dice of two models on the toy set, per training seed (leaderboard tests).
UNET = {0: [1.0, 0.8, 1.0, 0.6, 0.7, 1.0, 0.5, 0.0], 1: [1.0, 0.6, 0.0, 0.8, 0.9, 1.0, 0.7, 1.0]}
UNET_MEAN = [1.0, 0.7, 0.5, 0.7, 0.8, 1.0, 0.6, 0.5]  # per image, averaged over the two seeds
SK = {0: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0], 1: [1.0, 0.4, 1.0, 0.2, 0.5, 1.0, 0.3, 1.0]}


def board(*groups):
    """The leaderboard of these groups of summaries."""
    from benchmark.reporting import leaderboard

    return leaderboard.build([s for g in groups for s in g])


def row(b, model):
    """A model's row, ranked or incomplete."""
    return next(r for r in b["rows"] + b["incomplete"] if r["model"] == model)


def summary_fit(content: str, calls: list, synthetic: bool = True, key=lambda cfg: cfg.run_name()):
    """A stand-in for pipeline.fit writing a complete summary of data with this content hash (of the
    synthetic fallback when ``synthetic``); each call's ``key(cfg)`` goes to ``calls``."""
    from benchmark.core.summary import write_summary

    def fit(cfg, data_dir, out_dir):
        calls.append(key(cfg))
        kwargs = {"n_folds": cfg.n_folds, "content": content, "synthetic": synthetic}
        summary = make_summary(cfg.model, cfg.fold, cfg.seed, [0.5, 1.0], **kwargs)
        summary.update(run=cfg.run_name(), config=cfg.to_dict(), config_hash=cfg.hash())
        write_summary(out_dir, summary)
        return summary

    return fit


def twelve_subject_runs(model, per_subject):
    """One image per subject, 12 subjects, 2 folds of 6, all truths positive, one seed."""
    subjects, fold_of = list(range(1, 13)), [0] * 6 + [1] * 6
    return model_runs(model, {0: per_subject}, subjects=subjects, empty=[False] * 12, fold_of=fold_of)
