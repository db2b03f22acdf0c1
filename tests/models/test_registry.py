"""Registry errors, generic smp names, presence heads and the offline weights guard."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

import models
from models import registry
from models.registry import ModelError


def test_duplicate_registration_is_rejected() -> None:
    with pytest.raises(ModelError, match="already registered"):
        registry.register("unet")(lambda **kw: torch.nn.Identity())
    with pytest.raises(ModelError, match="already registered"):
        registry.register_prefix("smp")(lambda name, **kw: torch.nn.Identity())
    assert models.list_models().count("unet") == 1


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ModelError, match="did you mean 'unet_resnet34'"):
        models.create("unet_resnet43")
    with pytest.raises(ModelError, match="did you mean 'smp:unet:resnet34'"):  # a mistyped prefix
        models.create("smpx:unet:resnet34")


def test_unknown_argument_lists_accepted_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown argument\(s\) widht.*base_width"):
        models.create("unet", widht=8)
    with pytest.raises(ModelError, match=r"unknown argument\(s\) base_widht; did you mean 'base_width'\?"):
        models.create("unet", base_widht=8)
    # trans_cg_unet spells out its arguments, so the registry checks them too
    with pytest.raises(
        ModelError, match=r"'trans_cg_unet': unknown argument\(s\) num_head; did you mean 'num_heads'"
    ):
        models.create("trans_cg_unet", num_head=2)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "unet_resnet34",
            {"activation": "sigmoid"},
            "argument 'activation' is not allowed: models return raw logits",
        ),
        ("smp:unet:tu-resnet18", {"classes": 2}, "argument 'classes' is not allowed: models return one mask"),
        (
            "smp:fpn:resnet18",
            {"aux_params": {"classes": 1}},
            "argument 'aux_params' is not allowed: use presence_head",
        ),
    ],
)
def test_smp_kwargs_that_break_the_logits_contract_are_rejected(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        models.create(name, **kwargs)


def test_empty_rejects_encoder_weights() -> None:
    with pytest.raises(
        ModelError, match="empty has no encoder: encoder_weights must be None, got 'imagenet'"
    ):
        models.create("empty", encoder_weights="imagenet")
    assert models.create("empty", encoder_weights=None)(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_generic_smp_names_are_not_in_the_default_set() -> None:
    assert not any(name.startswith("smp:") for name in models.list_models())
    assert "unetplusplus" in models.get_info("smp:unetplusplus:resnet18").paper


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("smp:unett:resnet34", "unknown smp architecture 'unett'; did you mean 'unet'"),
        ("smp:unet:resnet343", "unknown smp encoder 'resnet343'; did you mean 'resnet34'"),
        ("smp:unet:tu-resnet1888", "unknown timm encoder"),
        ("smp:unet", "expected smp:<arch>:<encoder>"),
    ],
)
def test_generic_smp_errors(name: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        models.create(name)


def test_generic_smp_arch_is_case_insensitive() -> None:
    model = models.create("smp:FPN:resnet18")
    assert type(model.net).__name__ == "FPN"
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_smp_presence_head_returns_dict() -> None:
    model = models.create("smp:unet:resnet18", presence_head=True, decoder_channels=(16, 16, 16, 16, 16))
    out = model(torch.randn(2, 1, 64, 96))
    assert set(out) == {"mask", "presence"}
    assert out["mask"].shape == (2, 1, 64, 96) and out["presence"].shape == (2, 1)


def test_smp_bad_kwarg_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"unknown argument\(s\) no_such_option .*decoder_channels"):
        models.create("unet_mobilenet_v2", no_such_option=3)
    with pytest.raises(ModelError, match="smp:unet:tu-resnet18: cannot build"):
        models.create("smp:unet:tu-resnet18", no_such_option=3)


@pytest.fixture
def cold_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the network must not be touched")


@pytest.mark.parametrize("name", ["unet_resnet34", "smp:unet:tu-resnet18"])
def test_imagenet_weights_offline_fail_fast(
    cold_cache: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _no_network)
    with pytest.raises(ModelError, match="need network access or a cached download; HF_HUB_OFFLINE"):
        models.create(name, encoder_weights="imagenet")


def test_imagenet_weights_unreachable_network(cold_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("models.weights.network_reachable", lambda: False)
    with pytest.raises(ModelError, match="huggingface.co is unreachable"):
        models.create("unet_resnet34", encoder_weights="imagenet")


def test_unknown_weights_name(cold_cache: Path) -> None:
    with pytest.raises(ModelError, match="has no weights 'instagram'; available: imagenet"):
        models.create("unet_resnet34", encoder_weights="instagram")


def test_cached_weights_pass_the_guard(cold_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch as smp

    from models.weights import ensure_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = smp.encoders.encoders["resnet34"]["pretrained_settings"]["imagenet"]
    repo_dir = cold_cache / "hf" / "hub" / ("models--" + entry["repo_id"].replace("/", "--"))
    snapshot = repo_dir / "snapshots" / entry["revision"]
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"stub")
    ensure_available("resnet34", "imagenet")  # no error: found in the cache
    with pytest.raises(ModelError):
        ensure_available("resnet18", "imagenet")  # a different encoder is still missing


def test_check_protocol_runs_before_the_factory() -> None:
    calls: list[tuple[str, dict]] = []
    built: list[dict] = []

    def check(name: str, kwargs: dict) -> None:
        calls.append((name, kwargs))
        if kwargs.get("size", 1) < 1:
            raise ModelError(f"{name}: size must be at least 1")

    def factory(**kwargs: object) -> torch.nn.Module:
        built.append(kwargs)
        return torch.nn.Identity()

    registry.register("checked_model", paper="test", check=check)(factory)
    try:
        with pytest.raises(ModelError, match="checked_model: size must be at least 1"):
            models.create("checked_model", size=0)
        assert built == [] and calls == [("checked_model", {"size": 0})]
        models.check_kwargs("checked_model", {"size": 2})  # checks without building
        assert built == [] and calls[-1] == ("checked_model", {"size": 2})
        models.create("checked_model", size=3)
        assert built == [{"size": 3}]
        assert not hasattr(factory, "kwargs_check")  # no hidden attributes
        assert models.get_info("checked_model").check is check
    finally:
        registry.unregister("checked_model")


def test_a_check_that_crashes_is_one_model_error() -> None:
    # registered from outside models/: the package is inferred from the factory's module ("tests")
    def check(name: str, kwargs: dict) -> None:
        raise KeyError("width")

    registry.register("crashing_check", check=check)(lambda **kw: torch.nn.Identity())
    try:
        with pytest.raises(ModelError, match=r"model 'crashing_check' \(tests\): its check failed: KeyError"):
            models.check_kwargs("crashing_check", {})
    finally:
        registry.unregister("crashing_check")


@pytest.mark.parametrize("name", ["", "a:b", " padded", 3])
def test_bad_names_are_refused(name: object) -> None:
    with pytest.raises(ModelError, match="must be a non-empty name without ':'"):
        registry.register(name)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="check must be a function"):
        registry.register("fine_name", check="not callable")  # type: ignore[arg-type]


def test_duplicate_names_name_the_owner_package() -> None:
    with pytest.raises(ModelError, match=r"'trans_cg_unet' is already registered \(by nerve-bench\)"):
        registry.register("trans_cg_unet")(lambda **kw: torch.nn.Identity())
    assert models.get_info("smp:unet:resnet18").package == models.BUILTIN


def test_the_grid_check_reads_cached_weights_into_meta_without_a_warning_per_tensor(
    cold_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the first run each model is built on meta with its encoder_weights: torch warned once
    per loaded tensor that the copy is a no-op (432 stderr lines for resnet34 at every command)."""
    import warnings

    import huggingface_hub.constants
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    from benchmark.core.config import TrainConfig
    from benchmark.core.model_kwargs import build_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _no_network)
    # huggingface_hub read its cache path and offline flag when first imported (an earlier test)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cold_cache / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    entry = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo_dir = cold_cache / "hf" / "hub" / ("models--" + entry["repo_id"].replace("/", "--"))
    snapshot = repo_dir / "snapshots" / entry["revision"]
    snapshot.mkdir(parents=True)
    encoder = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    save_file(
        {k: v.contiguous() for k, v in encoder.state_dict().items()}, str(snapshot / "model.safetensors")
    )
    (snapshot / "config.json").write_text("{}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = build_model(TrainConfig(model="smp:unet:resnet18", encoder_weights="imagenet"))
    assert next(model.parameters()).is_meta and not [str(w.message)[:80] for w in seen]


def test_a_kwargs_refusal_names_the_model_as_the_user_wrote_it() -> None:
    """A named smp model's refusal spoke of its smp:arch:encoder spec only ('smp:unet:densenet121:
    unknown argument(s) base_width'), a name the user never wrote."""
    with pytest.raises(
        ModelError, match=r"^model 'unet_densenet121': smp:unet:densenet121: unknown argument"
    ):
        models.check_kwargs("unet_densenet121", {"base_width": 16})
    with pytest.raises(ModelError, match=r"^smp:unet:resnet18: unknown argument\(s\) base_width"):
        models.check_kwargs("smp:unet:resnet18", {"base_width": 16})  # its own name: not said twice
