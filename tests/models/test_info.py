"""Parameter and FLOP counting, and the `models` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import models
from benchmark.cli import main
from models.info import count_params, describe, gflops


def test_count_params_counts_trainable_and_frozen() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 1, 1))  # 2*9+2 and 2+1
    assert count_params(model) == 23
    model[0].weight.requires_grad_(False)  # frozen, like a fixed pretrained encoder: still counted
    assert count_params(model) == 23
    model.register_buffer("stats", torch.zeros(100))  # buffers are state, not parameters
    assert count_params(model) == 23


def _small_trans_cg_unet() -> nn.Module:
    return models.create("trans_cg_unet", base_width=4, depth=3, embed_dim=32, num_layers=2, num_heads=4)


def test_gflops_counts_attention_on_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    size = (64, 96)  # depth 3: an 8 x 12 grid of N = 96 tokens
    cpu = gflops(_small_trans_cg_unet(), size)
    with torch.device("meta"):
        meta = gflops(_small_trans_cg_unet().to("meta"), size)
    assert cpu == pytest.approx(meta, rel=1e-9)
    # Without attention the count drops by exactly QK^T and AV: 2 matmuls x 2 N^2 dim FLOPs per layer.
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda q, k, v, **kw: v)
    no_attention = gflops(_small_trans_cg_unet(), size)
    assert (cpu - no_attention) * 1e9 == pytest.approx(2 * (2 * 2 * 96**2 * 32), rel=1e-9)


def test_gflops_counts_multiply_add_as_two() -> None:
    # 1x1 conv 1->1 without bias on 256x256: 65536 multiply-adds = 131072 FLOPs
    model = nn.Conv2d(1, 1, 1, bias=False)
    assert gflops(model, size=256) == pytest.approx(131072 / 1e9)
    assert gflops(model, size=32) == pytest.approx(2 * 32 * 32 / 1e9)
    assert gflops(model, size=(448, 608)) == pytest.approx(2 * 448 * 608 / 1e9)
    assert model.training  # mode restored


def test_describe_matches_a_real_build() -> None:
    row = describe("sk_unet")
    assert set(row) == {"name", "params", "gflops", "paper"}
    assert row["params"] == count_params(models.create("sk_unet"))
    assert row["gflops"] == pytest.approx(gflops(models.create("sk_unet")), rel=1e-6)
    assert "Byra" in row["paper"]


def test_models_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json", "--include", "smp:unet:tu-resnet18"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert names == models.list_models() + ["smp:unet:tu-resnet18"]
    for row in rows:
        assert set(row) == {"name", "params", "gflops", "paper", "package"} and row["paper"]
        assert (row["params"] > 0 and row["gflops"] > 0) == (row["name"] != "empty")
    assert next(r for r in rows if r["name"] == "empty")["params"] == 1  # its frozen constant
    assert {r["package"] for r in rows if r["name"] in models.list_models(models.BUILTIN)} == {models.BUILTIN}


def test_models_command_table_and_bad_include(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    *table, named = out.splitlines()
    assert "trans_cg_unet" in out and not any("nnunet" in line for line in table)  # not in the table, but
    assert named.endswith(": nnunet_plain, nnunet_resenc")  # named under it: the README lists them
    assert main(["models", "--include", "smp:unet:nope"]) == 2
    assert "unknown smp encoder 'nope'" in capsys.readouterr().err


def test_empty_model_is_constant_background() -> None:
    model = models.create("empty", presence_head=True)
    out = model(torch.randn(3, 1, 32, 64))
    assert out["mask"].shape == (3, 1, 32, 64) and (out["mask"] == -20.0).all()
    assert (torch.sigmoid(out["presence"]) < 0.5).all()
