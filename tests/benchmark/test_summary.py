"""summary.json writing/reading, canonical form, schema keys and environment capture."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmark.core import summary as S
from benchmark.core.config import SCHEMA_VERSION
from datamodules.errors import DataError
from tests.benchmark.oracles import missing_keys


def test_to_jsonable_converts_numpy_and_non_finite():
    value = {"a": np.float32(0.5), "b": np.array([1, 2]), "c": (np.int64(3), float("nan")), "d": float("inf")}
    assert S.to_jsonable(value) == {"a": 0.5, "b": [1, 2], "c": [3, None], "d": None}


def test_dumps_is_sorted_indented_and_strict():
    text = S.dumps({"b": 1, "a": {"z": float("nan"), "y": 2}})
    assert text == '{\n  "a": {\n    "y": 2,\n    "z": null\n  },\n  "b": 1\n}\n'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(min_size=1), json_values, max_size=5))
def test_write_read_round_trip(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("s") / "summary.json"
    S.write_summary(path, payload)
    back = S.read_summary(path)
    assert back == {**payload, "schema_version": SCHEMA_VERSION}
    assert path.read_text() == S.dumps(back)  # canonical: sorted keys, indent 2


def test_write_summary_into_directory_is_atomic(tmp_path):
    path = S.write_summary(tmp_path / "run", {"status": "complete", "config_hash": "abc"})
    assert path == tmp_path / "run" / "summary.json"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary left behind
    assert S.is_complete(tmp_path / "run", "abc")
    assert not S.is_complete(tmp_path / "run", "other")
    assert not S.is_complete(tmp_path / "missing", "abc")


def test_read_summary_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="summary file not found"):
        S.read_summary(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON"):
        S.read_summary(bad)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DataError, match="schema_version 99 is not the supported 3$"):
        S.read_summary(future)
    assert not S.is_complete(bad, "x")
    (tmp_path / "run" / "summary.json").mkdir(parents=True)  # named ".../summary.json/summary.json" before
    for where in (tmp_path / "run", tmp_path / "run" / "summary.json"):
        with pytest.raises(DataError, match=r"run/summary\.json: a directory, not a summary file$"):
            S.read_summary(where)


def test_schema_1_summaries_are_refused_in_one_line_naming_the_file(tmp_path):
    """Schema 1 scored the images it tuned on; its numbers must not mix with nested (schema 2) ones."""
    old = tmp_path / "run" / "summary.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"schema_version": 1, "status": "complete", "config_hash": "abc"}))
    with pytest.raises(DataError) as info:
        S.read_summary(old.parent)
    message = str(info.value)
    assert (
        "\n" not in message and str(old) in message and "schema_version 1" in message and "re-run" in message
    )
    assert not S.is_complete(old, "abc")  # so `fit` re-runs it rather than returning the old numbers


def test_missing_keys_lists_schema_gaps():
    assert "per_image.dice" in missing_keys({"per_image": {}})
    assert "status" in missing_keys({})
    v2 = {
        "selection",
        "split",
        "global_batch",
        "world_size",
        "selection.metrics",
        "split.folds",
        "metrics.raw",
    }
    assert v2 <= set(missing_keys({}))
    partial = {"metrics": {"raw": {}, "post": {}}, "selection": {"metrics": {"raw": {}}}}
    gaps = missing_keys(partial)
    assert (
        "selection.metrics.post" in gaps
        and "selection.metrics.raw" not in gaps
        and "metrics.post" not in gaps
    )


def test_environment_has_versions_device_and_git_sha():
    env = S.environment()
    assert set(env) == {"python", "torch", "lightning", "smp", "timm", "device", "git_sha", "platform"}
    assert env["torch"] != "unknown" and env["lightning"] != "unknown"
    assert env["git_sha"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", env["git_sha"])


@pytest.mark.skipif(shutil.which("git") is None, reason="no git here")
def test_git_sha_marks_a_checkout_with_changed_tracked_files(tmp_path):
    """A run of edited code recorded the clean HEAD: the board cited a commit that did not run."""
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "-c",
        "commit.gpgsign=false",
        "-C",
        str(tmp_path),
    ]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("results, data: not code\n")
    assert S.git_sha(tmp_path) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert S.git_sha(tmp_path) == f"{head}-dirty"


def test_git_sha_outside_a_repository_is_unknown(tmp_path):
    assert S.git_sha(tmp_path) == "unknown"
    assert S.package_version("no-such-distribution-xyz") == "unknown"
