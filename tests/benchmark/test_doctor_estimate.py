"""doctor's wall-time estimate: the plan, the per-run arithmetic by hand, and the phases of a short
fit it takes the per-run overhead from."""

from __future__ import annotations

import pytest

from benchmark.doctor import estimate, report, session
from benchmark.doctor.settings import CHECKS, DoctorSettings


def test_estimate_by_hand():
    plan = estimate.Plan(
        models=("a", "b", "c"),
        runs_per_model=5,
        epochs=2,
        image_size=64,
        n_folds=5,
        inner_fraction=0.25,
        frames=100,
    )
    assert plan.split() == (60.0, 20.0, 20.0)  # fit, inner, outer frames
    rates = {
        "a": {"suite_train_img_s": 10.0, "infer_img_s": 20.0},
        "b": {"suite_train_img_s": None, "infer_img_s": 40.0},
    }
    # a: 2 x 60 / 10 train + 2 x 20 / 20 validation + 40 / 20 final = 16 s; b (nothing to train): 40/40 = 1 s
    out = estimate.estimate(plan, rates, measured_size=64, devices=2, decode_s_per_frame=0.01)
    assert out["per_run_s"] == {"a": 16.0, "b": 1.0} and out["missing"] == ["c"]
    assert out["wall_s"] == pytest.approx(1.0 + 85 / 2) and out["device_hours"] == pytest.approx(85 / 3600)
    # measured at 32 px: 4x the pixels per frame at 64; 50 devices: the longest run bounds the wall time
    scaled = estimate.estimate(plan, rates, measured_size=32, devices=50, decode_s_per_frame=0.0)
    assert scaled["per_run_s"] == {"a": 64.0, "b": 4.0} and scaled["wall_s"] == 64.0
    assert any("x4" in a for a in scaled["assumptions"])
    # gpu.yaml's Ray takes cpus_per_run (2) CPUs a run: 8 GPUs and 6 CPUs train 3 runs at once, not 8
    capped = estimate.estimate(plan, rates, measured_size=64, devices=8, decode_s_per_frame=0.0, cpus=6)
    assert capped["runs_at_once"] == 3 and capped["wall_s"] == pytest.approx(85 / 3)
    assert "3 run(s) at once on 8 device(s), as 6 CPUs allow at cpus_per_run: 2" in capped["assumptions"][1]
    assert estimate.runs_at_once(8, 64, 2.0) == 8 and estimate.runs_at_once(2, 1, 2.0) == 1
    assert estimate.clock(3725) == "1h02m" and estimate.clock(125) == "2m05s"


def test_estimate_adds_each_runs_overhead_from_the_short_fit_as_a_low_and_a_high_reading():
    plan = estimate.Plan(("a", "b"), runs_per_model=5, epochs=2, image_size=64, n_folds=5,
                         inner_fraction=0.25, frames=100)  # fmt: skip
    fit = {"setup_s": 3.0, "outside_epochs_s": 1.0, "finalize_s": 7.0, "scored_frames": 10}
    rates = {"a": {"suite_train_img_s": 10.0, "infer_img_s": 20.0, **fit}, "b": {"infer_img_s": 40.0}}
    # a's finalize beyond its passes: 7 - 10 / 20 = 6.5 s; once per run 3 + 1 = 4 s; the plan scores
    # 20 inner + 20 outer frames, 4x the fit's 10: low 4 + 6.5 = 10.5 s, high 4 + 4 x 6.5 = 30 s.
    assert estimate.overhead_s(plan, rates["a"]) == (10.5, 30.0)
    assert estimate.overhead_s(plan, rates["b"]) is None  # no fit measured
    out = estimate.estimate(plan, rates, measured_size=64, devices=2, decode_s_per_frame=0.01)
    assert out["per_run_s"] == {"a": 16.0 + 10.5, "b": 1.0} and out["overhead_s"] == {"a": [10.5, 30.0]}
    assert out["wall_s"] == pytest.approx(1.0 + (26.5 + 1) * 5 / 2)
    assert out["wall_s_high"] == pytest.approx(1.0 + (46 + 1) * 5 / 2)
    assert "no per-run overhead for b: their fit was not measured" in out["assumptions"]


def test_a_fits_phases_by_hand():
    from benchmark.doctor.model_checks import phases

    summary = {"train_time_s": 5.0, "dataset": {"n_inner": 30, "n_outer": 70}}
    # called at 0, fit 2..9 (5 s of it epochs), returned at 15; the repeat set up in 1.5 s
    got = phases(summary, (0.0, 2.0, 9.0, 15.0), (15.0, 16.5, 24.0))
    assert got == {"setup_s": 1.5, "outside_epochs_s": 2.0, "finalize_s": 6.0, "scored_frames": 100}
    # nothing to train: no fit hook; the repeat (2 s) is all set-up, and so is the fit's first 2 s
    assert phases(summary, (0.0, None, None, 9.0), (9.0, None, 11.0))["finalize_s"] == 7.0


def test_default_plan_is_the_default_config():
    plan = estimate.default_plan()
    assert (len(plan.models), plan.runs_per_model, plan.epochs, plan.image_size, plan.frames) == (
        9,
        5,
        40,
        256,
        5635,
    )
    assert plan.cpus_per_run == 2.0  # executed as gpu.yaml executes it


def test_every_kept_copy_after_a_model_holds_the_estimate_so_far(monkeypatch):
    """The estimate ran only at the end: a doctor killed at the device's hard limit inside a slow
    model's check (begun within --budget-s) left a doctor.json without one (GPU review)."""

    def data(ctx):
        ctx.decode_s_per_frame = 0.001
        return report.Finding("decoded")

    def fake_model(ctx, model, work):
        return report.Finding("fit", {"model": model, "suite_train_img_s": 100.0, "infer_img_s": 200.0})

    monkeypatch.setattr(session, "prepare_data", data)
    monkeypatch.setattr(session, "_model", fake_model)
    kept = []
    skip = tuple(c for c in CHECKS if c not in ("data", "models", "estimate"))
    settings = DoctorSettings(device="cpu", models=("unet", "sk_unet"), skip=skip)
    final = session.run_doctor(settings, progress=lambda line: None, after_each=kept.append)
    estimates = [[c for c in rep["checks"] if c["name"] == "estimate"] for rep in kept]
    assert [len(e) for e in estimates] == [0] * (len(kept) - 3) + [1, 1, 1]  # after each model, then its own
    assert estimates[-3][0]["detail"].startswith("so far: default benchmark's 1 measured model(s)")
    assert estimates[-2][0]["detail"].startswith("so far: default benchmark's 2 measured model(s)")
    last = [c for c in final["checks"] if c["name"] == "estimate"]
    assert len(last) == 1 and not last[0]["detail"].startswith("so far") and final["finished"]
