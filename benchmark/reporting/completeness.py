"""Is a model complete? Each seed's outer folds must score exactly the expected images, each once.
Also the split's fold table as its runs recorded it (``fold_table``, ``n_folds``).

The expected set comes from the split, not from the runs being checked: in k-fold mode every image
of the data set (indices 0..n_train-1, ``dataset.n_train``); in hold-out mode the hold-out set
(``split.outer_indices``, the same in every run of one benchmark). A run also records the indices
of its own outer fold (``split.outer_indices``); scoring an image outside it is named too, since that
image may have been trained on. Counting images instead would let "image 99 instead of 11" pass.

Summaries written before ``outer_indices`` existed still carry ``dataset.n_train``, so k-fold boards
get the full check. A hold-out board whose summaries do not name the hold-out set checks every seed
against the image set that most models score (named by whose it is), when it has the fold table's size
(``agreed_index``): two models that each score 12 images, but different ones, are not both ranked
(the board's tests would silently use only the images they share). Otherwise it counts the images
against the fold table (and duplicates).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

LISTED = 3  # indices named per problem; the rest are counted


def _split(summary: dict[str, Any]) -> dict[str, Any]:
    return summary.get("split") or {}


def n_folds(runs: list[dict[str, Any]]) -> int:
    """K, the number of outer folds (one value per benchmark: n_folds is part of its hash)."""
    return max(int(_split(s).get("n_folds") or s.get("n_folds") or 1) for s in runs)


def fold_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The split's fold table (fold, subjects, n_images, positive_fraction) as recorded by the runs,
    with each fold's inner selection set (``inner``: ``{"subjects", "n_images"}``, on which the
    nerve-bench runs of the fold chose their epoch and post-processing) where they agree on one.
    Imported runs record the same set but made their choices outside nerve-bench: not counted."""
    tables = sorted({json.dumps(_split(s).get("folds") or [], sort_keys=True) for s in runs})
    table: list[dict[str, Any]] = max((json.loads(t) for t in tables), key=len, default=[])
    ours = [s for s in runs if not s.get("external")]
    for entry in table:
        sel = [s.get("selection") or {} for s in ours if s.get("fold") == entry["fold"]]
        sets = {json.dumps({"subjects": sorted(x["subjects"]), "n_images": x.get("n_images")}, sort_keys=True)
                for x in sel if x.get("subjects")}  # fmt: skip
        entry["inner"] = json.loads(sets.pop()) if len(sets) == 1 else None
    return table


def _index(summary: dict[str, Any]) -> list[int]:
    return [int(i) for i in (summary.get("per_image") or {}).get("index") or []]


def images_text(values: list[int]) -> str:
    """'image 7' / 'images 1, 2, 3 and 4 more'."""
    shown = ", ".join(str(v) for v in values[:LISTED])
    rest = f" and {len(values) - LISTED} more" if len(values) > LISTED else ""
    return f"image{'s' if len(values) > 1 else ''} {shown}{rest}"


def expected_index(runs: list[dict[str, Any]]) -> tuple[np.ndarray, str] | None:
    """(the image indices each seed must cover, what they are called), or None when not recorded."""
    modes = {str(_split(s).get("mode", "kfold")) for s in runs}
    if modes == {"holdout"}:
        recorded = Counter(tuple(_split(s)["outer_indices"]) for s in runs if _split(s).get("outer_indices"))
        if not recorded:
            return None
        chosen = min(recorded, key=lambda t: (-recorded[t], t))  # the runs agree unless one is corrupt
        return np.asarray(sorted(chosen), dtype=np.int64), "the hold-out set"
    sizes = {
        int((s.get("dataset") or {})["n_train"]) for s in runs if (s.get("dataset") or {}).get("n_train")
    }
    if len(sizes) != 1:
        return None
    n = sizes.pop()
    return np.arange(n, dtype=np.int64), f"the data set's images 0..{n - 1}"


def agreed_index(runs: list[dict[str, Any]], count: int) -> tuple[np.ndarray, str] | None:
    """The image set that most models score (a model votes once for each set one of its seeds
    scores; ties: the smaller set in sort order), when it has ``count`` images; else None. Its name
    says whose set it is, since a model off it may be the right one when few models vote."""
    scored: dict[tuple[str, int], set[int]] = {}
    for s in runs:
        scored.setdefault((str(s.get("model")), int(s.get("seed", 0))), set()).update(_index(s))
    voters: dict[tuple[int, ...], set[str]] = {}
    for (model, _), images in scored.items():
        voters.setdefault(tuple(sorted(images)), set()).add(model)
    if not voters:
        return None
    chosen = min(voters, key=lambda t: (-len(voters[t]), t))
    if len(chosen) != count:
        return None
    names = sorted(voters[chosen])
    who = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
    return np.asarray(chosen, dtype=np.int64), f"the images {who} score{'s' if len(names) == 1 else ''}"


def _grouped(owners: dict[int, list[str]], images: list[int]) -> dict[tuple[str, ...], list[int]]:
    """The images grouped by the runs named for them, in index order."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in images:
        groups.setdefault(tuple(sorted(set(owners.get(i, [])))), []).append(i)
    return groups


def seed_coverage(seed: int, runs: list[dict[str, Any]], expected: tuple[np.ndarray, str] | int) -> list[str]:
    """Problems with one seed's folds (all present): images scored twice, outside the expected set,
    outside the run's own outer fold, or not scored. ``expected`` is an int when only a count is known."""
    scored: dict[int, list[str]] = {}
    declared: dict[int, list[str]] = {}
    for s in runs:
        for i in _index(s):
            scored.setdefault(i, []).append(str(s.get("run")))
        for i in _split(s).get("outer_indices") or []:
            declared.setdefault(int(i), []).append(str(s.get("run")))
    twice = sorted(i for i, who in scored.items() if len(who) > 1)
    problems = [
        f"seed {seed}: {images_text(imgs)} scored more than once (by {', '.join(who)})"
        for who, imgs in _grouped(scored, twice).items()
    ]
    if isinstance(expected, int):
        if len(scored) != expected:
            problems.append(f"seed {seed}: folds cover {len(scored)} of {expected} images")
        return problems
    index, name = expected
    extra = sorted(set(scored) - set(index.tolist()))
    absent = sorted(set(index.tolist()) - set(scored))
    problems += [
        f"seed {seed}: {images_text(imgs)} scored by {', '.join(who)} {'are' if len(imgs) > 1 else 'is'} "
        f"not in {name}"
        for who, imgs in _grouped(scored, extra).items()
    ]
    problems += [
        f"seed {seed}: {images_text(imgs)} not scored "
        + (f"(outer fold of {', '.join(who)})" if who else "by any fold")
        for who, imgs in _grouped(declared, absent).items()
    ]
    return problems + _outside_own_fold(seed, runs, set(twice) | set(extra))


def _outside_own_fold(seed: int, runs: list[dict[str, Any]], reported: set[int]) -> list[str]:
    """Images a run scored although its own split puts them outside its outer fold (not yet reported)."""
    problems = []
    for s in runs:
        own = _split(s).get("outer_indices")
        if own is None:
            continue
        outside = sorted(set(_index(s)) - {int(i) for i in own} - reported)
        if outside:
            problems.append(
                f"seed {seed}: {s.get('run')} scored {images_text(outside)} outside its outer fold"
            )
    return problems


def same_images(rows: list[dict[str, Any]], images: dict[str, dict[str, np.ndarray]]) -> None:
    """Mark incomplete every complete row that scored other images than most complete rows: a board
    tests its models on one set of images. Only summaries that record neither the data set's size nor
    their outer folds (a count is all there is to check) can differ here."""
    complete = [r for r in rows if r["complete"]]
    sets = Counter(tuple(images[r["model"]]["index"].tolist()) for r in complete)
    if len(sets) < 2:
        return
    chosen = min(sets, key=lambda t: (-sets[t], t))
    for r in complete:
        if tuple(images[r["model"]]["index"].tolist()) != chosen:
            r["complete"] = False
            r["missing"].append(f"scored other images than the {sets[chosen]} model(s) ranked")


def mixed_sources(runs: list[dict[str, Any]]) -> list[str]:
    """A row is one method: runs trained by nerve-bench and imported masks under one name are not."""
    imported = sorted({f"fold {s['fold']} seed {s['seed']}" for s in runs if s.get("external")})
    if not imported or len(imported) == len(runs):
        return []
    return [f"mixes runs trained by nerve-bench with imported masks ({', '.join(imported)} imported)"]
