"""speed: every figure (a)-(e) is printed, positive and finite (no timing assertions)."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from benchmark import speed, speed_loops
from benchmark.cli import main


@pytest.mark.slow
def test_speed_json_on_cpu_with_synthetic_data(capsys, tmp_path, monkeypatch, nondeterministic):
    from datamodules.decoded_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # the user's decoded-data cache
    code = main(["speed", "--models", "unet,unet_resnet34", "--image-size", "64", "--batch-size", "2",
                 "--steps", "2", "--warmup", "1", "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)  # stdout holds nothing but the JSON
    assert [r["model"] for r in rows] == ["unet", "unet_resnet34"]
    for row in rows:
        assert tuple(row) == speed.RESULT_KEYS
        assert (row["device"], row["image_size"], row["batch_size"]) == ("cpu", 64, 2)
        figures = [row[k] for k in speed.RESULT_KEYS[4:]]
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures), row
        assert row["ratio_suite_vs_plain"] == pytest.approx(
            row["suite_train_img_s"] / row["plain_train_img_s"]
        )
        assert row["ratio_suite_vs_ceiling"] == pytest.approx(
            row["suite_train_img_s"] / row["ceiling_train_img_s"]
        )
    # the Trainer's process-wide deterministic switch does not leak out of the suite measurement
    # (off before: the `nondeterministic` fixture)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not (tmp_path / "cache").exists()  # the temporary layout left no entry in the user's cache


def test_timed_loop_excludes_warmup():
    calls = []

    def step(batch: int) -> int:
        calls.append(batch)
        return 4

    rate = speed_loops.timed_loop(step, itertools.count(), warmup=2, steps=3, dev=torch.device("cpu"))
    assert calls == [0, 1, 2, 3, 4] and rate > 0


@pytest.mark.parametrize(("n_workers", "warmup"), [(0, 1), (2, 5)])
def test_the_plain_loop_times_no_batch_its_workers_decoded_before_the_clock(
    synthetic_dir, monkeypatch, n_workers, warmup
):
    """Its DataLoader starts prefetch_factor (2) x workers batches at once: on a GPU (8 workers) 16;
    and the batches drawn lie in one epoch of the loader, whatever the data set's size."""
    seen = {}

    def timed(step, batches, warmup, steps, dev):
        seen.update(warmup=warmup, steps=steps)
        return 1.0

    monkeypatch.setattr(speed_loops, "timed_loop", timed)
    monkeypatch.setattr(speed_loops, "_cycle", lambda make_epoch: seen.update(first=make_epoch(0)))
    # 48 frames: 3 batches of 16 per pass over the data, fewer than the loop draws
    s = speed.SpeedSettings(image_size=32, batch_size=16, steps=3, warmup=1, workers=n_workers,
                            model_kwargs={"unet": {"base_width": 4, "depth": 2}})  # fmt: skip
    speed_loops.plain_train_img_s("unet", synthetic_dir, s, torch.device("cpu"))
    first = seen.pop("first")
    assert seen == {"warmup": warmup, "steps": 3}
    # One loader epoch holds every batch drawn: no epoch restart (a pipeline stall) in the window.
    assert len(first) == warmup + 3 and len(first.dataset) == 48


def test_suite_timer_counts_only_post_warmup_batches():
    timer = speed._timer_callback(warmup=2, steps=3)
    module = SimpleNamespace(device=torch.device("cpu"))
    for i in range(5):
        timer.on_train_batch_end(None, module, None, {"image": torch.zeros(3 + i, 1, 2, 2)}, i)
    assert timer.images == 5 + 6 + 7 and timer.end >= timer.start > 0


def test_suite_timer_without_warmup_times_every_batch_from_the_first_start():
    timer = speed._timer_callback(warmup=0, steps=2)
    module = SimpleNamespace(device=torch.device("cpu"))
    starts = []
    for i in range(2):
        timer.on_train_batch_start(None, module, None, i)
        starts.append(timer.start)
        timer.on_train_batch_end(None, module, None, {"image": torch.zeros(3 + i, 1, 2, 2)}, i)
    assert timer.images == 3 + 4 and starts[0] == starts[1] == timer.start > 0 and timer.end >= timer.start
    assert speed.SpeedSettings(warmup=0).warmup == 0
    with pytest.raises(ValueError, match="warmup at least 0"):
        speed.SpeedSettings(warmup=-1)


def test_suite_and_plain_clocks_synchronise_alike(monkeypatch):
    """Issue 15: the suite's timer synchronised after every step, the bare loops only around the timed
    block, which biased suite/plain. Both now synchronise exactly twice: after warm-up and at the end."""
    calls = []
    monkeypatch.setattr(speed, "synchronize", lambda dev: calls.append(dev))
    monkeypatch.setattr(speed_loops, "synchronize", lambda dev: calls.append(dev))
    timer = speed._timer_callback(warmup=2, steps=4)
    module = SimpleNamespace(device=torch.device("cpu"))
    for i in range(6):
        timer.on_train_batch_end(None, module, None, {"image": torch.zeros(2, 1, 2, 2)}, i)
    suite_syncs, calls[:] = len(calls), []
    speed_loops.timed_loop(lambda b: 2, itertools.count(), warmup=2, steps=4, dev=torch.device("cpu"))
    assert suite_syncs == len(calls) == 2 and timer.images == 8


def test_empty_model_has_inference_figures_only(tmp_path):
    settings = speed.SpeedSettings(image_size=32, batch_size=2, steps=1, warmup=1, device="cpu")
    row = speed.measure_model("empty", tmp_path, None, settings, tmp_path)  # no data read: nothing to train
    assert tuple(row) == speed.RESULT_KEYS
    assert [row[k] for k in ("suite_train_img_s", "plain_train_img_s", "ceiling_train_img_s")] == [None] * 3
    assert row["ratio_suite_vs_plain"] is None and row["infer_img_s"] > 0
    assert speed.format_table([row]).splitlines()[1].split()[4:7] == ["n/a"] * 3


def test_format_table_and_bad_settings(capsys):
    row = dict(zip(speed.RESULT_KEYS, ["unet", "cpu", 64, 2, 10.0, 5.0, 20.0, 123.456, 7.5, 2.0, 0.5]))
    table = speed.format_table([row]).splitlines()
    assert len(table) == 2 and table[0].startswith("model") and "suite/ceiling" in table[0]
    assert table[1].split() == [
        "unet",
        "cpu",
        "64",
        "2",
        "10.00",
        "5.00",
        "20.00",
        "123",
        "7.50",
        "2.00",
        "0.50",
    ]
    assert main(["speed", "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert main(["speed", "--workers", "-1"]) == 2  # named as the flag the user typed
    assert "--workers must be 0 or more, got -1" in capsys.readouterr().err
    assert main(["speed", "--models", ","]) == 2  # measured nothing and exited 0
    assert "error: --models ',': no model named" in capsys.readouterr().err
