"""doctor: the real command on CPU at tiny sizes, one failing check among working ones, the estimate
by hand, and the tables. Figures are checked for presence and sense, never for speed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.doctor import data, device_checks, report, session
from benchmark.doctor.settings import CHECKS, DoctorSettings

# Everything but Ray (tests/benchmark/test_ray_grid.py runs the executor; a local Ray costs ~30 s
# here) at the CPU defaults, two models, and the compile check on aot_eager (inductor's C++
# compile of even a tiny graph takes a minute on two cores).
CLI = [
    "doctor",
    "--device",
    "cpu",
    "--models",
    "unet,empty",
    "--skip",
    "ray",
    "--compile-backend",
    "aot_eager",
    "--json",
    "-",
]


RATES = ("fit_s", "suite_train_img_s", "plain_train_img_s", "ceiling_train_img_s", "infer_img_s",
         "latency_ms", "deterministic_speedup", "suite_train_img_s_nondeterministic")  # fmt: skip


@pytest.mark.slow
def test_doctor_on_cpu_runs_every_check_and_reports_figures(capfd, tmp_path, monkeypatch, nondeterministic):
    from datamodules.decoded_cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # the user's decoded-data cache
    code = main(CLI)
    assert not (tmp_path / "cache").exists()  # the doctor's temporary layouts leave no entry in it
    out, err = capfd.readouterr()  # the fds: the spawned DDP ranks printed Lightning's banner, notices
    assert not [
        n for n in ("Initializing distributed", "LeafSpec", "sync_dist=True", "max_steps=") if n in err
    ]
    assert code == 0, out
    rep = json.loads(out)  # stdout holds nothing but the JSON
    checks = {c["name"]: c for c in rep["checks"]}
    expected = ["device", "idle", "data", "bf16", "compile", "channels_last", "gpu_cache",
                "model unet", "ddp", "ray", "model empty", "estimate"]  # fmt: skip
    assert [c["name"] for c in rep["checks"]] == expected
    status = {n: c["status"] for n, c in checks.items()}
    assert status["idle"] in ("OK", "WARN")  # whatever else this machine runs: WARN, never FAIL
    assert status == {**dict.fromkeys(expected, "OK"), "idle": status["idle"], "ray": "SKIP"}, {
        n: c["detail"] for n, c in checks.items()
    }
    unet, empty = checks["model unet"]["figures"], checks["model empty"]["figures"]
    # Two fits with the same seed in one process on one CPU: bit-identical weights.
    assert unet["bit_identical"] is True and unet["max_abs_diff"] == 0.0
    assert unet["nondeterministic_ops"] == []  # strict determinism on CPU: an alert would stop the fit
    for key in RATES:
        assert isinstance(unet[key], float) and math.isfinite(unet[key]) and unet[key] > 0, key
    assert unet["ratio_suite_vs_plain"] == pytest.approx(
        unet["suite_train_img_s"] / unet["plain_train_img_s"]
    )
    assert empty["suite_train_img_s"] is None and empty["infer_img_s"] > 0  # nothing to train
    assert 0 <= unet["outer_dice"] <= 1 and empty["bit_identical"] is True
    assert checks["ddp"]["figures"]["backend"] == "gloo"
    est = checks["estimate"]["figures"]
    assert est["wall_s_high"] >= est["wall_s"] > 0 and sorted(est["per_run_s"]) == ["empty", "unet"]
    for fig in (unet, empty):
        assert fig["scored_frames"] > 0 and fig["setup_s"] > 0 and fig["finalize_s"] > 0, fig
        assert 0 <= fig["outside_epochs_s"] < fig["fit_s"]
    assert sorted(est["overhead_s"]) == ["empty", "unet"]
    assert est["overhead_s"]["unet"][1] >= est["overhead_s"]["unet"][0] > 0
    assert len(est["missing"]) == 7 and any("scaled by pixel count" in a for a in est["assumptions"])
    assert rep["ok"] is True and rep["settings"]["image_size"] == 64 and rep["settings"]["tiny"] is True
    # The fits' process-wide deterministic switch does not leak (off before: `nondeterministic`).
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_multi_process_checks_run_after_the_first_model_so_a_budget_cuts_a_model_first():
    s = DoctorSettings(device="cpu", models=("unet", "empty", "sk_unet"))
    ctx = session.Context(torch.device("cpu"), s, Path("unused"))
    names = [name for name, _, _ in session._plan(ctx)]
    assert names[-6:] == ["model unet", "ddp", "ray", "model empty", "model sk_unet", "estimate"]


def test_doctor_settings_take_no_warmup_and_refuse_fewer():
    assert DoctorSettings(warmup=0).warmup == 0  # as `speed --warmup 0`: the first step timed too
    with pytest.raises(ValueError, match="warmup must be at least 0, got -1"):
        DoctorSettings(warmup=-1)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        DoctorSettings(steps=0)


def test_a_failing_check_is_one_fail_row_and_the_others_still_run(monkeypatch):
    def broken(dev):
        raise RuntimeError("no bf16 here\nsecond line of the message")

    monkeypatch.setattr(device_checks, "bf16", broken)
    skip = tuple(c for c in CHECKS if c not in ("device", "bf16", "channels_last"))
    lines = []
    rep = session.run_doctor(DoctorSettings(device="cpu", models=("unet",), skip=skip), progress=lines.append)
    checks = {c["name"]: c for c in rep["checks"]}
    assert checks["bf16"]["status"] == "FAIL"
    assert checks["bf16"]["detail"] == "RuntimeError: no bf16 here second line of the message"
    assert checks["channels_last"]["status"] == "OK"  # ran after the failure
    # the first convolution's features, not the 1-channel output (channels_last whatever the layout)
    assert checks["channels_last"]["detail"].endswith("(features channels_last)")
    assert checks["channels_last"]["figures"]["features_channels_last"] is True
    assert checks["device"]["status"] == "OK" and checks["model unet"]["status"] == "SKIP"
    assert rep["ok"] is False and report.exit_code(session.results_of(rep)) == 1
    text = session.format_report(rep)
    assert "-- FAILED" in text and "bf16           FAIL" in text and "\n" not in checks["bf16"]["detail"]
    assert any(line.startswith("doctor: bf16 FAIL") for line in lines)


def test_the_idle_check_warns_when_other_work_shares_the_box(monkeypatch):
    """A 2-CPU host: a load above 0.5 x 2 + 1 = 2 is other work; on a GPU, 2 GiB in use before the
    doctor allocates or more than 10% utilisation. A figure the platform lacks is '-', not a FAIL."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.0, 0.0))
    quiet = device_checks.idle(torch.device("cpu"))
    assert (quiet.status, quiet.detail) == ("OK", "idle: host load 1.9 on 2 CPU(s)")
    assert quiet.figures == {"host_load_1min": 1.9, "host_cpus": 2}
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 0.0, 0.0))
    busy = device_checks.idle(torch.device("cpu"))
    assert (busy.status, busy.detail) == (
        "WARN",
        "busy: host load 2.1 on 2 CPU(s): rates and the estimate may read low",
    )
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (77 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "utilization", lambda dev: 35)
    gpu = device_checks.idle(torch.device("cuda", 0))
    assert (
        gpu.status == "WARN" and gpu.figures["gpu_used_gib"] == 3.0 and gpu.figures["gpu_util_percent"] == 35
    )
    assert (
        gpu.detail
        == "busy: 3.0 GiB of the GPU in use by others; GPU 35% busy: rates and the estimate may read low"
    )

    def refused(*args):
        raise RuntimeError("pynvml does not seem to be installed")  # torch's own words when it is absent

    monkeypatch.setattr(torch.cuda, "utilization", refused)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (79.5 * 2**30, 80 * 2**30))
    alone = device_checks.idle(torch.device("cuda", 0))
    assert alone.status == "OK" and alone.figures["gpu_util_percent"] is None
    assert alone.detail == "idle: host load 0.5 on 2 CPU(s); 0.5 GiB of the GPU in use, utilisation -%"
    monkeypatch.setattr(torch.cuda, "mem_get_info", refused)
    monkeypatch.delattr(os, "getloadavg")
    bare = device_checks.idle(torch.device("cuda", 0))
    assert (
        bare.status == "OK"
        and bare.detail == "idle: host load - on 2 CPU(s); - GiB of the GPU in use, utilisation -%"
    )


def test_the_bf16_check_fails_a_gpu_without_native_bf16(monkeypatch):
    """torch's is_bf16_supported() is True on a V100 or T4 (emulated), so the check passed there while
    every bf16 convolution would skip cuDNN; the check asks the device's compute capability."""
    seen = []

    def capability(device=None):
        seen.append(device)
        return (7, 0)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    with pytest.raises(RuntimeError, match=r"compute capability 7\.0: no native bf16 before 8\.0"):
        device_checks.bf16(torch.device("cuda", 1))
    assert seen[0] == torch.device("cuda", 1)  # the device under test, not the current one


def test_cli_rejects_bad_options_in_one_line(capsys, tmp_path):
    assert main(["doctor", "--skip", "nothing"]) == 2
    assert main(["doctor", "--image-size", "50"]) == 2
    assert main(["doctor", "--models", "no_such_model"]) == 2
    assert main(["doctor", "--data-dir", str(tmp_path / "missing")]) == 2  # a FAIL check, exit 1, at the end
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "nothing" in err[0] and "multiple of 32" in err[1] and "no_such_model" in err[2]
    assert err[3] == f"error: {tmp_path / 'missing'}: --data-dir is not a directory (a Kaggle layout: train/)"


def test_run_check_verdicts():
    ok = report.run_check("a", lambda: report.Finding("fine", {"x": 1.0}))
    assert (ok.status, ok.detail, ok.figures) == ("OK", "fine", {"x": 1.0})

    def skipped():
        raise report.Skip("needs two GPUs")

    assert report.run_check("b", skipped).status == "SKIP"
    long = report.run_check("c", lambda: 1 / 0 if True else None)
    assert long.status == "FAIL" and long.detail == "ZeroDivisionError: division by zero"
    results = [ok, report.CheckResult("w", "WARN", "rerun differs", 0.0)]
    assert report.exit_code(results) == 0 and report.exit_code([*results, long]) == 1
    assert len(report.one_line(ValueError("x" * 1000))) == report.REASON_CHARS


def test_tables_render_figures_and_gaps():
    row = report.CheckResult(
        "model unet",
        "OK",
        "d",
        1.0,
        {
            "model": "unet",
            "fit_s": 12.345,
            "bit_identical": False,
            "nondeterministic_ops": ["adaptive_avg_pool2d_backward_cuda", "put_"],
            "suite_train_img_s": 1234.0,
            "infer_img_s": None,
        },
    )
    table = report.models_table([row]).splitlines()
    cells = table[1].split()
    ops = "adaptive_avg_pool2d_backward_cuda,put_"
    assert table[0].startswith("model") and cells[:5] == ["unet", "12.35", "no", ops, "1234"]
    assert report.fmt([]) == "none"
    assert cells[-1] == "-"  # latency: not measured
    checks = report.checks_table([row, report.CheckResult("ddp", "SKIP", "1 GPU: needs two", 0.04)])
    assert checks.splitlines()[2].split(None, 3) == ["ddp", "SKIP", "0.0", "1 GPU: needs two"]


def test_the_fits_record_which_ops_torch_warned_have_no_deterministic_kernel():
    """On a GPU the recipe's determinism only warns. A real alert (``put_`` has no deterministic
    kernel on any device) is recorded by op and not shown, even where it was shown once before and
    when the block raises; any other warning is shown as it came, and the filters are as before."""
    from benchmark.doctor.model_checks import alerted_ops, determinism_alerts

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    filters = list(warnings.filters)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match="put_ does not have"):  # shown once, outside the block
            torch.zeros(5).put_(torch.tensor([0]), torch.ones(1))
        with warnings.catch_warnings(record=True) as shown, pytest.raises(ValueError, match="mid-fit"):
            warnings.simplefilter("default")
            with determinism_alerts() as ops:
                for _ in range(2):
                    torch.zeros(5).put_(torch.tensor([0]), torch.ones(1))
                warnings.warn("unrelated", FutureWarning, stacklevel=1)
                raise ValueError("mid-fit")
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert ops == ["put_"] and [str(w.message) for w in shown] == ["unrelated"]
    assert warnings.filters == filters
    alert = "{} does not have a deterministic implementation, but you set ..."
    messages = [alert.format("b_cuda"), "other", alert.format("a"), alert.format("b_cuda")]
    assert alerted_ops(messages) == ["a", "b_cuda"]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_layout_is_the_same_bytes_with_or_without_processes(tmp_path, monkeypatch):
    from datamodules.kaggle import load_train

    data.generate_layout(tmp_path / "serial", subjects=2, frames=3)
    monkeypatch.setattr(data, "PARALLEL_FROM", 0)
    monkeypatch.setattr(data.os, "cpu_count", lambda: 2)
    data.generate_layout(tmp_path / "pool", subjects=2, frames=3)
    assert _tree(tmp_path / "serial") == _tree(tmp_path / "pool")
    train = load_train(tmp_path / "serial")
    assert train.stems == ["1_1", "1_2", "1_3", "2_1", "2_2", "2_3"] and train.mask_source == "tif+csv"
    assert not any(p.name.startswith(".doctor-data-") for p in tmp_path.iterdir())  # temp parts removed


def test_fp32_comparisons_run_without_tf32_and_restore_it(monkeypatch):
    """cuDNN's default TF32 convolutions round two fp32 paths differently (beyond the 1e-4 tolerance
    in an emulation): the bf16, compile and layout checks compare IEEE fp32, and leave the flag as
    found."""
    import models

    seen, net, create = [], device_checks._net, models.create

    def spy(make):
        def made(*args, **kwargs):
            seen.append(torch.backends.cudnn.allow_tf32)
            return make(*args, **kwargs)

        return made

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch, "compile", lambda module, backend: module)
    monkeypatch.setattr(device_checks, "_net", spy(net))
    monkeypatch.setattr(models, "create", spy(create))
    cpu = torch.device("cpu")
    assert device_checks.compile_works(cpu, "eager").figures["max_abs_diff"] == 0.0
    device_checks.bf16(cpu)
    device_checks.channels_last(cpu)
    assert seen == [False, False, False] and torch.backends.cudnn.allow_tf32 is True


def test_a_cpu_run_on_a_gpu_box_is_named_by_its_cpu(monkeypatch):
    from benchmark.core import summary

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert summary.device_name() == summary.device_name("cuda") == "NVIDIA H100 80GB HBM3"
    assert (
        summary.environment(torch.device("cpu"))["device"]
        == summary.device_name("cpu")
        != "NVIDIA H100 80GB HBM3"
    )
    info = device_checks.device_info(torch.device("cpu"))
    assert info.figures["name"] != "NVIDIA H100 80GB HBM3" and "a GPU present, not used" in info.detail


def test_a_spent_time_budget_skips_the_checks_left_and_still_reports(tmp_path, capsys, monkeypatch):
    """On a lent GPU with a hard limit, --budget-s makes the doctor end with its table, marked
    incomplete (exit 3, as `run` with work left); --json PATH holds the report before the first
    check and after every check (a kill loses only the check in flight)."""
    kept = []
    real = session.run_doctor

    def spy(settings, progress=None, after_each=None):
        def then_read(report):
            after_each(report)  # the command's writer
            kept.append([c["name"] for c in json.loads((tmp_path / "d.json").read_text())["checks"]])
            if kept[-1] == ["device"]:  # what a doctor killed during its second check leaves
                (tmp_path / "killed.json").write_text((tmp_path / "d.json").read_text())

        return real(settings, progress, then_read)

    now = [0.0]  # the session's clock: only the device check moves it, by 1 s

    def slow_device(dev):
        now[0] += 1.0
        return report.Finding("a box")

    monkeypatch.setattr(session, "run_doctor", spy)
    monkeypatch.setattr(session, "clock", lambda: now[0])
    monkeypatch.setattr(device_checks, "device_info", slow_device)
    json_path = str(tmp_path / "d.json")
    args = ["doctor", "--device", "cpu", "--models", "unet", "--budget-s", "0.5", "--json", json_path]
    assert main(args) == 3
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "d.json").read_text())
    rows = {c["name"]: c for c in saved["checks"]}
    assert rows["device"]["status"] == "OK" and rows["idle"]["status"] == "SKIP"
    assert rows["idle"]["detail"].startswith("--budget-s 0.5: no time left (1 s spent, longest check ")
    assert "budget" not in rows["estimate"]["detail"], rows["estimate"]  # it reads what was measured
    assert (
        saved["complete"] is False and saved["cut"][:2] == ["idle", "data"] and "estimate" not in saved["cut"]
    )
    assert kept[:2] == [[], ["device"]] and "estimate" in kept[-1]
    assert "-- INCOMPLETE: --budget-s left out idle, data, " in out
    # --show prints a saved report's tables again, runs nothing, and says where a killed one stopped
    assert main(["doctor", "--show", json_path]) == 3 and capsys.readouterr().out == out
    assert main(["doctor", "--show", str(tmp_path / "killed.json")]) == 3
    shown = capsys.readouterr().out
    assert "device" in shown and "idle" not in shown
    kept_line = "-- INCOMPLETE: stopped after check 'device' (the report it kept while running)"
    assert shown.rstrip().endswith(kept_line)
    (tmp_path / "bad.json").write_text('{"checks": 1}')
    (tmp_path / "short.json").write_text('{"settings": {}, "device": "cpu", "checks": [], "seconds": 1}')
    for path in (tmp_path / "bad.json", tmp_path / "short.json", tmp_path / "absent.json"):
        assert main(["doctor", "--show", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err, err


def test_the_budget_paces_a_model_by_the_models_not_by_a_longer_one_off_check():
    assert session._pace({}, "models") == 0.0
    assert session._pace({"data": 5.0, "models": 20.0, "ray": 80.0}, "models") == 20.0
    assert session._pace({"data": 5.0, "ray": 80.0}, "models") == 80.0  # no model yet: the longest
    assert session._pace({"data": 5.0, "models": 20.0, "ray": 80.0}, "ddp") == 80.0


def test_an_unwritable_json_path_is_one_line_before_any_check(capsys, tmp_path):
    """The path given is at fault, before any work: a usage problem, exit 2 (as `run --results-dir`)."""
    (tmp_path / "a-file").write_text("")
    for where in ("/proc/nerve-bench/doctor.json", str(tmp_path / "a-file" / "doctor.json")):
        assert main(["doctor", "--device", "cpu", "--json", where]) == 2
        err = capsys.readouterr().err
        assert "doctor: device" not in err and err.count("\n") == 1 and err.startswith("error: --json: ")
        assert str(Path(where).parent) in err
