"""Section 4: one-sided updates, the aggressive inner loop and its switch, the lr plateau rule."""
import math

import pytest
import torch

import lagvae
from conftest import DEVICES, random_batch, tiny_model


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("part,other", [("encoder", "decoder"), ("decoder", "encoder")])
def test_one_sided_step_touches_only_its_own_side(device, optim, part, other):
    model, cfg = tiny_model(optim=optim)
    model.to(device)
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    x = random_batch().to(device)
    lagvae.update(model, opts, x, cfg, "all")              # give both optimizers some state
    mine, theirs = getattr(model, part), getattr(model, other)
    before_mine, before_theirs = snapshot(mine), snapshot(theirs)
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opts[other].state.items()}
    lagvae.update(model, opts, x, cfg, part)
    assert changed(before_theirs, theirs) == set()
    assert all(p.grad is None for p in theirs.parameters())
    assert {id(p): {k: v.clone() for k, v in s.items()} for p, s in opts[other].state.items()}.keys() == state_before.keys()
    for p, s in opts[other].state.items():
        for k, v in s.items():
            assert torch.equal(v, state_before[id(p)][k])
    assert len(changed(before_mine, mine)) > 0
    assert all(p.requires_grad for p in model.parameters())     # trainable() restores the flags


def test_joint_step_moves_both_sides():
    model, cfg = tiny_model()
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    enc, dec = snapshot(model.encoder), snapshot(model.decoder)
    lagvae.update(model, opts, random_batch(), cfg, "all")
    assert changed(enc, model.encoder) and changed(dec, model.decoder)


def test_update_clips_the_stepped_gradient():
    model, cfg = tiny_model(clip_grad=1e-3, lr=1.0, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)                                  # gradients far above the clip
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    before = torch.cat([p.detach().flatten().clone() for p in model.encoder.parameters()])
    lagvae.update(model, opts, random_batch(), cfg, "encoder")
    after = torch.cat([p.detach().flatten() for p in model.encoder.parameters()])
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-4)   # SGD step = lr * clipped grad


def counting_sampler(batch):
    calls = []

    def sample():
        calls.append(1)
        return batch
    return sample, calls


def test_inner_loop_fixed_budget():
    model, cfg = tiny_model(inner_steps=4)
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    sample, calls = counting_sampler(random_batch(seed=1))
    assert lagvae.aggressive_inner_loop(model, opts, random_batch(), sample, cfg) == 4
    assert len(calls) == 4          # the first step uses the outer batch; the last sample is unused


def test_inner_loop_stops_at_a_window_boundary_or_the_cap():
    model, cfg = tiny_model(inner_window=3, max_inner_steps=10)
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    sample, _ = counting_sampler(random_batch(seed=1))
    for _ in range(5):
        steps = lagvae.aggressive_inner_loop(model, opts, random_batch(), sample, cfg)
        # The first window only sets the reference, so at least two windows run.
        assert steps in (6, 9, 10)


def test_inner_loop_only_moves_the_encoder():
    model, cfg = tiny_model()
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    dec = snapshot(model.decoder)
    sample, _ = counting_sampler(random_batch(seed=1))
    lagvae.aggressive_inner_loop(model, opts, random_batch(), sample, cfg)
    assert changed(dec, model.decoder) == set()


def test_aggressive_switch_patience():
    s = lagvae.AggressiveSwitch(True, patience=2)
    for mi in (0.01, 0.5, 0.4, 0.6, 0.55):
        s.step(mi)
        assert s.on
    s.step(0.58)
    assert not s.on
    s.step(5.0)                     # off for good
    assert not s.on
    off = lagvae.AggressiveSwitch(False, 2)
    off.step(1.0)
    assert not off.on


def test_plateau_rule():
    p = lagvae.Plateau(patience=2)
    verdicts = [p.step(v) for v in (10, 9, 9.5, 9.2, 8, 8.1, 8.0, 8.5)]
    assert verdicts == ["best", "best", None, "decay", "best", None, "decay", None]
    assert p.best == 8


def test_training_is_deterministic(data_env, tmp_path):
    a = lagvae.train(lagvae.resolve_config({"preset": "tiny", "aggressive": True, "quiet": True,
                                            "out": str(tmp_path / "a")}))
    b = lagvae.train(lagvae.resolve_config({"preset": "tiny", "aggressive": True, "quiet": True,
                                            "out": str(tmp_path / "b")}))
    strip = lambda r: {k: v for k, v in r.items() if k != "train_seconds"}
    assert strip(a) == strip(b)
    assert math.isfinite(a["iw_nll"])
