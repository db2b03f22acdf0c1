"""SegModule: schedule, precision, hyper-parameters, probabilities at 420x580, TTA, scores, host syncs."""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from benchmark.core.config import ConfigError, TrainConfig
from benchmark.scoring import counts as count_fns
from benchmark.scoring import metrics
from benchmark.training.device import resolve_precision
from benchmark.training.module import (
    SegModule,
    WarmupCosine,
    config_from_dict,
    set_schedule_length,
)
from models.info import has_trainable_params

SMALL = {"model": "unet", "model_kwargs": {"base_width": 4, "depth": 2}, "image_size": 64}


def small_module(**kw) -> SegModule:
    torch.manual_seed(0)
    return SegModule(TrainConfig(**{**SMALL, **kw}).to_dict()).eval()


def test_warmup_cosine_hand_computed():
    f = WarmupCosine(warmup_steps=2, total_steps=6, cosine=True)
    assert [f(0), f(1), f(2), f(4), f(6), f(9)] == [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert f(3) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    flat = WarmupCosine(warmup_steps=4, total_steps=10, cosine=False)
    assert [flat(0), flat(3), flat(4), flat(9)] == [0.25, 1.0, 1.0, 1.0]
    assert WarmupCosine(0, 4, True)(0) == 1.0


def test_resolve_precision(monkeypatch):
    """auto: bf16 where the GPU has it natively (8.0 on); torch emulates it before (is_bf16_supported
    is True on a V100 or T4), where cuDNN has no bf16 convolution: 16-mixed there."""
    assert resolve_precision("auto", "cpu") == "32"
    assert resolve_precision("auto", "gpu") == "bf16-mixed"  # none visible: refused before it trains
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_precision("auto", "cuda") == "16-mixed"
    assert resolve_precision("bf16-mixed", "cuda") == "bf16-mixed"  # asked for: as asked
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"


def test_hyperparameters_are_primitives_only():
    module = small_module()
    assert json.loads(json.dumps(dict(module.hparams))) == {"config": module.cfg.to_dict()}
    assert config_from_dict(module.hparams["config"]) == module.cfg
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        config_from_dict({"nope": 1})


def test_the_epoch_loss_is_a_mean_per_image_with_no_host_scalar(monkeypatch):
    module = small_module()
    module.add_loss("train", torch.tensor(1.0), 1)  # a short last batch of one image
    module.add_loss("train", torch.tensor(3.0), 3)
    assert module.epoch_loss("train") == 2.5  # (1 + 3 x 3) / 4, not the batch means' 2.0
    made = []
    real = torch.as_tensor
    monkeypatch.setattr(torch, "as_tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    module.add_loss("val", torch.tensor(0.5), 4)
    assert made == [] and module.epoch_loss("val") == 0.5  # no tensor from a Python number


def test_predict_orig_maps_back_to_kaggle_size_with_max_prob_presence():
    module = small_module()
    with torch.no_grad():
        prob, presence, out = module.predict_orig(torch.randn(3, 1, 64, 64))
    assert prob.shape == (3, 420, 580) and prob.dtype == torch.float32
    assert torch.equal(presence, prob.flatten(1).amax(1))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 64, 64)


def test_presence_head_probability_is_its_sigmoid():
    module = small_module(model_kwargs={"base_width": 4, "depth": 2, "presence_head": True})
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        _, presence, out = module.predict_orig(x)
    assert torch.equal(presence, torch.sigmoid(out["presence"].float()).reshape(-1))


def test_flip_tta_averages_the_flipped_prediction():
    module = small_module(tta=True)
    plain = small_module(tta=False)
    plain.load_state_dict(module.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        prob, _, _ = module.predict_orig(x)
        a, _, _ = plain.predict_orig(x)
        b, _, _ = plain.predict_orig(torch.flip(x, dims=[-1]))
    # restore() is bilinear with symmetric sampling, so it commutes with a horizontal flip
    torch.testing.assert_close(prob, 0.5 * (a + torch.flip(b, dims=[-1])), atol=1e-6, rtol=0)
    assert not torch.allclose(prob, a)


def test_channels_last_gives_the_same_output():
    a, b = small_module(), small_module(channels_last=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_empty_model_has_nothing_to_optimise():
    module = SegModule(TrainConfig(model="empty", image_size=64).to_dict())
    assert not has_trainable_params(module.model)
    assert module.configure_optimizers() is None
    assert has_trainable_params(small_module().model)


def test_adamw_with_per_step_warmup_cosine():
    module = small_module(lr=0.01, weight_decay=0.1, warmup_epochs=1.0, epochs=4)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    set_schedule_length(sched, total_steps=8, epochs=4, cfg=module.cfg)  # 2 steps per epoch
    assert isinstance(opt, torch.optim.AdamW) and conf["lr_scheduler"]["interval"] == "step"
    assert opt.param_groups[0]["weight_decay"] == 0.1
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.005, 0.01, 0.01])
    assert lrs[-1] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_module_pickles_for_ddp_spawn():
    module = small_module(compile=False)
    clone = pickle.loads(pickle.dumps(module))
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(clone(x), module(x))


def test_confusion_counts_match_the_metrics_module():
    rng = np.random.default_rng(0)
    pred, truth = rng.random((5, 7, 9)) > 0.5, rng.random((5, 7, 9)) > 0.7
    truth[0] = False
    pred[0] = False
    ours = count_fns.confusion_counts_torch(torch.from_numpy(pred), torch.from_numpy(truth)).numpy()
    assert np.array_equal(ours, metrics.counts_to_array(metrics.confusion_counts(pred, truth)))
    assert ours[0].tolist() == [0, 0, 0, 63]


def test_validation_steps_fill_the_inner_set_scores():
    module = small_module()
    image = torch.randn(3, 1, 64, 64)
    truth = torch.zeros(3, 420, 580, dtype=torch.uint8)
    truth[1, 100:200, 100:200] = 1
    batch = {"image": image, "mask_orig": truth, "index": torch.tensor([5, 2, 5])}
    with torch.no_grad():
        module.validation_step(batch, 0)
        prob, presence, _ = module.predict_orig(image)
    val = module.scores["val"].compute()
    assert set(module.scores) == {"val"}  # one evaluation path: the outer fold is scored by finalize
    assert val["index"].tolist() == [2, 5]  # the repeated index 5 is scored once
    expected = count_fns.confusion_counts_torch(prob > 0.5, truth).numpy()
    assert val["counts"].tolist() == expected[[1, 0]].tolist()
    assert val["presence_prob"].tolist() == presence[[1, 0]].tolist()


SYNCS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


def _count_host_syncs(monkeypatch, counted: Counter, inside: dict) -> None:
    """Count tensor-to-host conversions made while ``inside["step"]`` is set."""
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            if inside["step"]:
                counted[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)


@pytest.mark.parametrize(
    "model,kwargs",
    [("unet", {"base_width": 4, "depth": 2}),
     ("trans_cg_unet", {"base_width": 4, "depth": 2, "embed_dim": 16, "num_layers": 1, "num_heads": 2})],
)  # fmt: skip
def test_training_step_makes_no_host_sync(synthetic_dir, tmp_path, monkeypatch, model, kwargs):
    """No .item()/float()/.cpu()/bool() of a tensor inside training_step (a GPU would wait there)."""
    from lightning import seed_everything

    from benchmark.training.trainer import make_datamodule, train

    cfg = TrainConfig(model=model, model_kwargs=kwargs, image_size=64, epochs=1, batch_size=4, n_folds=3,
                      limit_train_batches=3, logger="none", progress_bar=False)  # fmt: skip
    counted, inside = Counter(), {"step": False, "steps": 0}
    _count_host_syncs(monkeypatch, counted, inside)
    original = SegModule.training_step

    def step(self, batch, batch_idx):
        inside["step"], inside["steps"] = True, inside["steps"] + 1
        try:
            return original(self, batch, batch_idx)
        finally:
            inside["step"] = False

    monkeypatch.setattr(SegModule, "training_step", step)
    inside["step"] = True  # the hook itself sees conversions (so the zero below can fail)
    assert float(torch.tensor(2.0)) == 2.0 and counted == Counter({"__float__": 1})
    inside["step"] = False
    counted.clear()
    seed_everything(0, verbose=False)
    train(cfg, SegModule(cfg.to_dict()), make_datamodule(cfg, synthetic_dir), tmp_path)
    assert inside["steps"] == 3
    assert counted == Counter()


def test_the_validation_loss_does_not_depend_on_the_eval_batch(synthetic_dir):
    """The box term was a mean over each batch's positives, weighted by the batch's images: the inner
    set's loss was 2.288 on one process and 2.526 split over two (trans_cg_unet). Now the box term is
    a mean over the epoch's positive images, as training takes it over a global batch's."""
    from benchmark.training.trainer import make_datamodule

    kwargs = {"base_width": 4, "depth": 2, "embed_dim": 16, "num_layers": 1, "num_heads": 2, "pos_grid": 4}
    module = small_module(model="trans_cg_unet", model_kwargs=kwargs, image_size=32)
    losses = []
    for size in (1, 3, 11):
        cfg = TrainConfig(**{**SMALL, "image_size": 32, "eval_batch_size": size})
        dm = make_datamodule(cfg, synthetic_dir)
        dm.setup()
        module._start("val")
        with torch.no_grad():
            for batch in dm.inner_dataloader():
                module._eval_step(batch, "val")
        losses.append(module.epoch_loss("val"))
    positives = int(dm.positive[dm.inner_indices].sum())
    assert 0 < positives < len(dm.inner_indices)  # some images have a box to score, some none
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5), losses
