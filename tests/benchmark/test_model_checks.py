"""A model off the contract is one line naming it and its package before anything trains (it was a
100-line traceback from `fit` and `speed`, and `run` failed each run only once it had started)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.cli import main
from benchmark.core.config import ConfigError, TrainConfig
from benchmark.core.model_kwargs import build_model
from models.registry import register, unregister


class Shrinks(nn.Module):
    """Mask logits at half the input's size."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NoMask(Shrinks):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": nn.functional.interpolate(self.conv(x), size=x.shape[-2:])}


class Frozen(Shrinks):
    def __init__(self, presence_head: bool = False, **_: object) -> None:
        super().__init__()
        self.conv.requires_grad_(False)  # an encoder frozen by accident: nothing would train

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.conv(x), size=x.shape[-2:])


class Headless(Frozen):
    def __init__(self, presence_head: bool = False, **_: object) -> None:
        super().__init__()
        self.conv.requires_grad_(True)  # trains, but ignores presence_head


BAD = {"shrinks": Shrinks, "no_mask": NoMask, "frozen": Frozen, "headless": Headless}


@pytest.fixture
def bad_models() -> Iterator[None]:
    for name, cls in BAD.items():
        register(f"check_{name}")(lambda presence_head=False, cls=cls, **kw: cls(presence_head=presence_head))
    yield
    for name in BAD:
        unregister(f"check_{name}")


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("shrinks", {}, "returns mask logits of shape (2, 1, 32, 32) for a (2, 1, 64, 64) input"),
        ("no_mask", {}, "returns neither mask logits nor a dict with a 'mask' entry"),
        ("frozen", {}, "has no parameter to train (all frozen?); a model that trains nothing says so with"),
        ("headless", {"presence_head": True}, "was asked for presence_head but returns no 'presence' entry"),
    ],
)
def test_a_model_off_the_contract_is_named_before_it_trains(bad_models, name, kwargs, words):
    with pytest.raises(ConfigError) as info:
        build_model(TrainConfig(model=f"check_{name}", image_size=64, model_kwargs=kwargs))
    message = str(info.value)  # named with the package that registered it: this test module's
    assert message.startswith(f"model 'check_{name}' (tests) ") and words in message, message
    build_model(TrainConfig(model="check_headless", image_size=64))  # without the head asked for: fine


def test_fit_and_speed_say_it_in_one_line(bad_models, tmp_path: Path, capsys):
    fit = ["fit", "--model", "check_shrinks", "--set", "image_size=64", "--out", str(tmp_path / "o")]
    assert main([*fit, "--data-dir", str(tmp_path)]) == 2
    assert main(["speed", "--models", "check_shrinks", "--image-size", "64", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("returns mask logits of shape (2, 1, 32, 32)" in line for line in lines)


def test_model_kwargs_too_big_or_refusing_the_input_stop_the_dry_run(tmp_path, synthetic_dir, capsys):
    """depth 99 overflowed on meta and was built again on the CPU: 24 GB and the OOM killer, even in
    a dry run. depth 7 at image_size 64 passed the dry run (13.94 GB of disk budgeted), then every
    run failed with the model's own ModelError (exit 1), where the README promises exit 2 first."""
    config = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "smoke.yaml"
    smoke = ["run", "--config", str(config), "--data-dir", str(synthetic_dir),
             "--results-dir", str(tmp_path / "r"), "--models", "unet", "--dry-run"]  # fmt: skip
    assert main([*smoke, "--set", "model_kwargs.unet={depth: 99}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'unet' with model_kwargs {'depth': 99}: cannot be built (Storage")
    assert main([*smoke, "--set", "model_kwargs.unet={depth: 7, base_width: 2}"]) == 2
    assert capsys.readouterr().err == (
        "error: model 'unet' (nerve-bench) at image_size 64: input H, W must be multiples of 128 (depth 7), "
        "got (64, 64)\n"
    )
