"""Section 6: one-sided updates, the aggressive inner loop and its switch, the lr plateau rule."""
import dataclasses
import json
import math
import re

import pytest
import torch
from hypothesis import given, strategies as st

import lagvae
from conftest import DEVICES, random_batch, random_images, tiny_image_model, tiny_model
from test_estimators import z_dependent


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,optim", [("text", "sgd"), ("text", "adam"), ("image", "adam"), ("text-bn", "sgd")])
@pytest.mark.parametrize("part,other", [("encoder", "decoder"), ("decoder", "encoder")])
def test_one_sided_step_touches_only_its_own_side(device, kind, optim, part, other):
    """Parameters, optimizer state and batch-norm statistics of the idle side stay exactly as they were."""
    if kind == "image":
        model, cfg = tiny_image_model(optim=optim)
        x = random_images().to(device)
    else:
        model, cfg = tiny_model(optim=optim, bn_gamma=0.5 if kind == "text-bn" else 0.0)
        x = random_batch().to(device)
    model.to(device)
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
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


def test_joint_step_moves_both_sides():
    model, cfg = tiny_model()
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    enc, dec = snapshot(model.encoder), snapshot(model.decoder)
    lagvae.update(model, opts, random_batch(), cfg, "all")
    assert changed(enc, model.encoder) and changed(dec, model.decoder)


def test_one_sided_step_is_clipped_by_the_joint_norm():
    """As in the official code: the encoder-only step is lr * g_enc * clip / ||(g_enc, g_dec)||."""
    model, cfg = tiny_model(clip_grad=1e-3, lr=1.0, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)                                  # gradients far above the clip
    x = random_batch()
    torch.manual_seed(3)
    lagvae.objective(model, x, cfg)[0].backward()
    norm = lambda m: torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).norm()
    g_enc, g_dec = float(norm(model.encoder)), float(norm(model.decoder))
    model.zero_grad(set_to_none=True)
    opts = lagvae.make_optimizers(model, cfg, cfg.lr)
    before = torch.cat([p.detach().flatten().clone() for p in model.encoder.parameters()])
    torch.manual_seed(3)
    lagvae.update(model, opts, x, cfg, "encoder")
    after = torch.cat([p.detach().flatten() for p in model.encoder.parameters()])
    expected = 1e-3 * g_enc / (g_enc ** 2 + g_dec ** 2) ** 0.5
    assert float((after - before).norm()) == pytest.approx(expected, rel=1e-4)


def counting_sampler(batch):
    calls = []

    def sample():
        calls.append(1)
        return batch
    return sample, calls


def test_inner_loop_fixed_budget():
    model, cfg = tiny_model(aggressive=True, inner_steps=4)
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
    enc, dec = snapshot(model.encoder), snapshot(model.decoder)
    sample, _ = counting_sampler(random_batch(seed=1))
    lagvae.aggressive_inner_loop(model, opts, random_batch(), sample, cfg)
    assert changed(dec, model.decoder) == set()
    assert changed(enc, model.encoder) == set(enc)          # and it does move the encoder, all of it


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


def scripted_losses(monkeypatch, per_token):
    """Make every encoder step return the next of these per-token losses (batches of 5 x 6 tokens)."""
    losses = iter(per_token)
    monkeypatch.setattr(lagvae, "update", lambda model, opts, x, *a, **k: (torch.tensor(next(losses) * 6.0),))


@pytest.mark.parametrize("inner_z,losses,steps", [
    (0.0, [5, 5, 5, 4, 4, 4, 4.1, 4.1, 4.1] + [9] * 9, 9),       # the paper's test: the first rise stops
    (0.0, [5, 4, 6, 4.8, 3.8, 5.8, 4.6, 3.6, 5.6] + [9] * 9, 12),  # noisy but falling: goes on
    (1.0, [5, 4, 6, 4.8, 3.8, 5.8, 4.6, 3.6, 5.6] + [9] * 9, 6),   # ... which is within noise: stops
    (1.0, [9, 9, 9, 5, 5.1, 4.9, 5, 5, 5] + [9] * 9, 9),           # a fall far beyond the noise: goes on
])
def test_inner_loop_stopping_rules(monkeypatch, inner_z, losses, steps):
    model, cfg = tiny_model(inner_window=3, inner_z=inner_z, max_inner_steps=30)
    scripted_losses(monkeypatch, losses)
    assert lagvae.aggressive_inner_loop(model, None, random_batch(), lambda: random_batch(), cfg) == steps


def test_inner_loop_windows_are_per_token_over_batches_of_any_length(monkeypatch):
    """The window's loss is its tokens' mean: summed over the window's batches, divided by all their
    tokens, not by the last batch's (text batches differ in length). Windows of 2; per-token losses 1, 1
    (6 tokens each), then 0.9 over 20 and 2 tokens: a fall, so the loop goes on; then 2, 2: a rise, stop."""
    model, cfg = tiny_model(inner_window=2, max_inner_steps=30)
    losses = iter([6.0, 6.0, 18.0, 1.8, 12.0, 12.0] + [99.0] * 30)       # per example, 5 examples a batch
    monkeypatch.setattr(lagvae, "update", lambda *a, **k: (torch.tensor(next(losses)),))
    lengths = iter([7, 21, 3] + [7] * 30)                                 # tokens + 1 (<s>)
    assert lagvae.aggressive_inner_loop(model, None, random_batch(), lambda: random_batch(length=next(lengths)),
                                        cfg) == 6


def test_a_pretrained_encoder_is_trained_first_and_its_cost_counts(data_env, tmp_path):
    """--pretrain-encoder (Li et al. 2019): an autoencoder (KL weight 0) is trained in pretrain/ first,
    its encoder starts the run, and its steps and seconds are part of the run's."""
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--iw-samples", "2",
                        "--pretrain-encoder", "--out", str(out)]) == 0
    ae = json.loads((out / "pretrain" / "result.json").read_text())
    assert json.loads((out / "pretrain" / "config.json").read_text())["config"]["beta"] == 0.0
    result, log = json.loads((out / "result.json").read_text()), lagvae.read_jsonl(out / "log.jsonl")
    assert result["steps_joint"] == ae["steps_joint"] + sum(r["steps_joint"] for r in log) > ae["steps_joint"]
    assert result["train_seconds"] > ae["train_seconds"]


def test_every_step_of_an_epoch_takes_the_annealed_weight_and_its_losses_make_the_log_row(data_env, tmp_path,
                                                                                          monkeypatch):
    """Ours + anneal: the decoder step takes the iteration's KL weight as the encoder steps do (not 1);
    the log row's train rec and KL are the means of the epoch's outer steps, every batch counted once."""
    real, calls = lagvae.update, []

    def recording(model, opts, x, cfg, part="all", kl_weight=1.0):
        out = real(model, opts, x, cfg, part, kl_weight)
        calls.append((part, kl_weight, float(out[1].sum()), float(out[2].sum()), x.size(0)))
        return out
    monkeypatch.setattr(lagvae, "update", recording)
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--iw-samples", "2", "--aggressive",
                        "--anneal", "--inner-steps", "2", "--out", str(out)]) == 0
    decoder = [c for c in calls if c[0] == "decoder"]
    assert decoder and all(w < 1.0 for _, w, *_ in decoder)
    for i, (_, w, *_) in enumerate(decoder):       # each decoder step follows its two encoder steps
        assert [c[1] for c in calls[3 * i:3 * i + 3]] == [w, w, w]
    row = lagvae.read_jsonl(out / "log.jsonl")[0]
    n = sum(c[4] for c in decoder)
    assert row["train_rec"] == pytest.approx(sum(c[2] for c in decoder) / n, rel=1e-5)
    assert row["train_kl"] == pytest.approx(sum(c[3] for c in decoder) / n, rel=1e-5)


def test_aggressive_switch_tolerance():
    s = lagvae.AggressiveSwitch(True, patience=2, tol=0.05)
    for mi in (0.5, 0.9, 0.93):                  # +0.03 is not an improvement
        s.step(mi)
        assert s.on
    s.step(0.96)                                 # +0.06 over the best (0.9) would be; +0.03 over 0.93 is not
    assert s.on and s.best == 0.96
    s.step(1.0), s.step(1.0)
    assert not s.on


def test_aggressive_switch_floor_guards_checks_within_an_epoch():
    # The first adaptive rule's failure (synthetic seed 2): three flat checks at the collapsed floor.
    s = lagvae.AggressiveSwitch(True, patience=2, tol=0.05, floor=0.2)
    for mi in (0.002, 0.002, 0.002, 0.003):
        s.step(mi, final=False)
        assert s.on
    s.step(0.002)                                # an epoch's end counts even below the floor ...
    assert s.on and s.bad == 1
    s.step(0.002, final=False)
    s.step(0.002)                                # ... so a model that never escapes ends as the paper's
    assert not s.on
    escaped = lagvae.AggressiveSwitch(True, patience=2, tol=0.05, floor=0.2)
    for mi in (0.01, 0.6, 1.2, 1.22):            # past the floor, flat checks within the epoch count
        escaped.step(mi, final=False)
        assert escaped.on
    escaped.step(1.24, final=False)
    assert not escaped.on


def test_mi_checks_within_an_epoch_do_not_change_training(data_env, tmp_path):
    """With a floor no MI reaches, in-epoch checks cannot end the phase; the epoch then trains exactly as
    with one check, so the checks draw no random numbers the training uses."""
    rows = {}
    for name, extra in (("paper", []), ("checked", ["--mi-checks", "4", "--mi-floor", "1000"])):
        out = tmp_path / name
        assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--aggressive", "--epochs", "1",
                            "--iw-samples", "0", "--out", str(out)] + extra) == 0
        rows[name] = lagvae.read_jsonl(out / "log.jsonl")[0]
    assert len(rows["checked"]["mi_checks"]) == 3 and rows["paper"]["mi_checks"] == []
    for k in ("train_elbo", "val_elbo", "val_mi_full", "steps_encoder", "steps_decoder"):
        assert rows["checked"][k] == rows["paper"][k], k


def test_mi_check_points_split_the_epoch():
    cfg = lagvae.resolve_config({"preset": "tiny", "mi_checks": 4})
    assert lagvae.mi_check_points(cfg, 100) == {25, 50, 75}
    assert lagvae.mi_check_points(dataclasses.replace(cfg, mi_checks=1), 100) == set()


def test_rules_fill_their_fields_under_explicit_flags():
    cfg = lagvae.resolve_config({"aggressive": True, "rule": "adaptive", "mi_tol": 0.1})
    assert (cfg.inner_window, cfg.inner_z, cfg.mi_checks, cfg.mi_tol, cfg.mi_floor) == (15, 0.0, 4, 0.1, 0.2)
    assert lagvae.mode_name(cfg) == "aggressive-adaptive"
    paper = lagvae.resolve_config({"aggressive": True})
    assert (paper.inner_window, paper.inner_z, paper.mi_checks, paper.mi_tol, paper.mi_floor) == (15, 0.0, 1, 0.0, 0.0)
    with pytest.raises(lagvae.UsageError, match="--rule"):
        lagvae.resolve_config({"rule": "fast"})


def test_adaptive_rule_checks_mi_within_the_epoch(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--aggressive", "--rule", "adaptive", "--mi-checks", "3",
                        "--epochs", "1", "--out", str(out)]) == 0
    assert sum(" | val mi_full " in line for line in capsys.readouterr().out.splitlines()) == 2
    row = lagvae.read_jsonl(out / "log.jsonl")[0]
    assert row["aggressive"] and len(row["mi_checks"]) == 2
    assert row["steps_decoder"] + row["steps_joint"] == 8 and row["steps_encoder"] >= 2 * 3 * row["steps_decoder"]  # tiny: 3-step windows


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


# ------------------------------------------------------------------------------------------------
# The other modes: KL schedules, free bits, BN-VAE, SA-VAE, LM

def test_annealing_and_cyclical_schedules():
    cfg = lagvae.resolve_config({"anneal": True, "kl_start": 0.1, "warm_up": 10})
    assert lagvae.kl_weight_at(cfg, 500, 100) == pytest.approx(0.55)
    assert lagvae.kl_weight_at(cfg, 1000, 100) == 1.0 and lagvae.kl_weight_at(cfg, 5000, 100) == 1.0
    iters = lagvae.resolve_config({"anneal": True, "kl_start": 0.0, "warm_up_iters": 30000})
    assert lagvae.kl_weight_at(iters, 15000, 100) == pytest.approx(0.5)
    cyc = lagvae.resolve_config({"cyclical": 2, "epochs": 10})
    assert [lagvae.kl_weight_at(cyc, it, 100) for it in (1, 126, 251, 500, 501)] == [0, 0.5, 1, 1, 0]
    beta = lagvae.resolve_config({"beta": 0.4})
    assert lagvae.kl_weight_at(beta, 1, 100) == 0.4 and lagvae.kl_weight_at(beta, 10 ** 6, 100) == 0.4


def test_evaluation_ignores_the_training_kl_weight():
    model, cfg = tiny_model()
    batches = [random_batch(seed=s) for s in range(3)]
    beta_cfg = dataclasses.replace(cfg, beta=0.2, anneal=True)
    assert lagvae.evaluate(model, batches, cfg) == lagvae.evaluate(model, batches, beta_cfg)


def blind_decoder(model, cfg):
    with torch.no_grad():
        model.decoder.trans_z.weight.zero_()
        model.decoder.lstm.weight_ih_l0[:, cfg.ni:].zero_()


def test_free_bits_gradient_vanishes_below_lambda():
    for lam, expect_zero in ((10.0, True), (1e-12, False)):
        model, cfg = tiny_model(free_bits=lam, nz=3, dtype=torch.float64)
        blind_decoder(model, cfg)                  # only the KL term reaches the encoder head
        loss, _, _ = lagvae.objective(model, random_batch(), cfg)
        loss.backward()
        grad = model.encoder.head.linear.weight.grad
        assert (grad.abs().sum() == 0) == expect_zero


@given(st.floats(0.1, 2.0), st.integers(0, 1000))
def test_bn_vae_kl_lower_bound(gamma, seed):
    model, cfg = tiny_model(bn_gamma=gamma, nz=3, seed=seed)
    with torch.no_grad():               # batch variance of the raw means well above BN's eps
        for p in model.encoder.parameters():
            p.normal_(0, 1)
    model.train()
    with torch.no_grad():
        mu, logvar = model.encode(random_batch(batch=6, seed=seed))
    assert float(lagvae.gaussian_kl(mu, logvar).mean()) >= cfg.nz * gamma ** 2 / 2 - 1e-4


def test_bn_vae_bound_lapses_when_the_raw_means_vary_less_than_eps():
    """The documented limit of BN-VAE (seen on yahoo-small): means whose batch variance is far below
    BatchNorm's eps are not scaled up to gamma, so the KL can still fall to ~0."""
    model, cfg = tiny_model(bn_gamma=0.6, nz=3, seed=0)
    model.train()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.normal_(0, 1)
        model.encoder.head.linear.weight.mul_(1e-5)        # raw-mean variance ~1e-10 << eps
        model.encoder.head.shift.zero_()                   # the learned shift's KL is not at issue
        mu, logvar = model.encode(random_batch(batch=6))
        logvar.zero_()
    assert float(lagvae.gaussian_kl(mu, logvar).mean()) < 0.01 * cfg.nz * 0.6 ** 2 / 2


def test_svi_refinement_raises_the_elbo():
    model, cfg = tiny_model(savae=True, svi_steps=20, dtype=torch.float64)
    z_dependent(model, 0.3)
    model.eval()
    x = random_batch(batch=16)

    def neg_elbo(mu, logvar, n=400):
        torch.manual_seed(1)
        z = lagvae.sample_z(mu, logvar, n)
        return -model.log_px_given_z(x, z).mean(1) + lagvae.gaussian_kl(mu, logvar)
    with torch.no_grad():
        mu0, logvar0 = model.encode(x)
        mu1, logvar1 = lagvae.infer(model, x, cfg)
        assert neg_elbo(mu1, logvar1).mean() < neg_elbo(mu0, logvar0).mean() - 0.02


def test_svi_encoder_gradient_matches_finite_differences():
    model, cfg = tiny_model(savae=True, svi_steps=3, dropout_in=0.0, dropout_out=0.0, dtype=torch.float64)
    z_dependent(model, 0.3)
    model.train()
    x = random_batch(batch=3)
    w = model.encoder.head.linear.weight

    def loss():
        torch.manual_seed(7)                       # the same noise in every evaluation
        return lagvae.objective(model, x, cfg)[0]
    grad, = torch.autograd.grad(loss(), w)
    v = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = 1e-6
    with torch.no_grad():
        w += eps * v
        up = loss()
        w -= 2 * eps * v
        down = loss()
        w += eps * v
    assert float((grad * v).sum()) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5)
    assert float(grad.abs().sum()) > 0


def test_svi_backward_is_clipped_where_the_unrolled_steps_blow_up(monkeypatch):
    """The gradient flowing back into each refinement iterate is clipped to norm 5, as in the
    original's backward pass. Through a sharply curved decoder the ten unrolled steps amplify it
    ~1e8-fold (on yahoo-small the unclipped backward reached 1e4-1e11 and SA-VAE did not train)."""
    def encoder_output_grads():
        model, cfg = tiny_model(savae=True, svi_steps=10, dropout_in=0.0, dropout_out=0.0, dtype=torch.float64)
        z_dependent(model, 3.0)
        model.train()
        x = random_batch(batch=4)
        mu0, logvar0 = (t.detach().requires_grad_() for t in model.encode(x))
        mu, logvar = lagvae.svi_refine(model, x, mu0, logvar0, cfg)
        torch.manual_seed(0)
        z = lagvae.sample_z(mu, logvar)
        (1e3 * (-model.log_px_given_z(x, z).mean() + lagvae.gaussian_kl(mu, logvar).mean())).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.decoder.parameters() if p.grad is not None)
        return float(mu0.grad.norm()), float(logvar0.grad.norm())
    assert all(0 < g <= 5 * (1 + 1e-9) for g in encoder_output_grads())
    monkeypatch.setattr(lagvae, "SVI_MAX_NORM", 1e30)         # no bound, forward or backward
    assert all(g > 1e6 for g in encoder_output_grads())


def test_lm_is_exact_and_has_no_latent(data_env, tmp_path):
    r = lagvae.train(lagvae.resolve_config({"preset": "tiny", "lm": True, "quiet": True, "epochs": 1,
                                            "out": str(tmp_path / "lm")}))
    assert r["mode"] == "lm" and r["kl"] == 0 and r["au"] == 0
    assert r["iw_nll"] == pytest.approx(r["elbo"], rel=1e-6)     # no latent: both are -log p(x)


# ------------------------------------------------------------------------------------------------
# Issue 12: divergence

def test_a_finite_blow_up_stops_the_run_and_keeps_the_last_good_checkpoint(data_env, tmp_path, capsys, monkeypatch):
    """The decoder's output layer is blown up by 10^4 just before the 3rd validation: the loss
    jumps to thousands of nats, finite but far past a uniform guess (its perplexity once overflowed
    into a traceback). The blow-up is forced because a real one (SGD at lr 16) came at a different
    epoch, or not at all, on another machine's thread count and float order."""
    out, real_evaluate, calls = tmp_path / "run", lagvae.evaluate, []

    def evaluate(model, batches, cfg, **kw):
        if kw.get("desc") == "valid":
            calls.append(1)
            if len(calls) == 3:
                model.decoder.pred.weight.data.mul_(1e4)
        return real_evaluate(model, batches, cfg, **kw)
    monkeypatch.setattr(lagvae, "evaluate", evaluate)
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "8", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "times that of a uniform guess" in err[0] and "training diverged" in err[0]
    epoch = int(re.search(r"epoch (\d+): validation loss", err[0]).group(1))
    log = lagvae.read_jsonl(out / "log.jsonl")
    assert epoch == 3 and len(log) == epoch and math.isfinite(log[-1]["val_elbo"]) and log[-1]["val_elbo"] > 1000
    assert torch.load(out / "last.pt", weights_only=False)["state"]["epoch"] == epoch - 1
    assert not (out / "result.json").exists()
    assert lagvae.main(["eval", "--ckpt", str(out / "model.pt"), "--quiet"]) == 0      # the best epoch, intact
    assert json.loads(capsys.readouterr().out)["elbo"] < 200


def test_divergence_rule():
    model, cfg = tiny_model(vocab=12)
    x = random_batch(vocab=12, batch=5, length=7)            # 6 predicted tokens, uniform guess 6 log 12
    uniform = 6 * math.log(12)
    ok = lagvae.evaluate(model, [x], cfg)
    assert lagvae.divergence(ok, ok["elbo"], model, [x]) is None and ok["elbo"] < 1.5 * uniform
    assert "over 50 times" in lagvae.divergence(ok, 51 * uniform, model, [x])
    assert lagvae.divergence(ok, 49 * uniform, model, [x]) is None
    assert lagvae.divergence({**ok, "mi": math.nan}, ok["elbo"], model, [x]) == "validation mi nan"
    assert lagvae.divergence({**ok, "elbo_ppl": math.inf}, ok["elbo"], model, [x]) == "validation elbo_ppl inf"
    image, _ = tiny_image_model()
    assert image.uniform_nll(random_images(batch=3)) == pytest.approx(3 * 784 * math.log(2))


def test_perplexity_past_float_range_is_infinite():
    assert lagvae.perplexity(10.0, 5) == pytest.approx(math.exp(2))
    assert lagvae.perplexity(800.0, 1) == math.inf


# ------------------------------------------------------------------------------------------------
# The rules of end_epoch, end to end: the validation numbers are scripted, the training is real.

def scripted_validation(monkeypatch, **series):
    """Replace the validation numbers named in `series` (one value per epoch's end-of-epoch validation)."""
    real, calls = lagvae.evaluate, []

    def evaluate(model, batches, cfg, *args, desc="eval", **kw):
        out = real(model, batches, cfg, *args, desc=desc, **kw)
        if desc == "valid":
            out.update({k: v[len(calls)] for k, v in series.items()})
            calls.append(out)
        return out
    monkeypatch.setattr(lagvae, "evaluate", evaluate)
    return calls


def test_decay_at_decays_after_exactly_those_epochs(data_env, tmp_path, monkeypatch):
    """--decay-at replaces the plateau rule: the lr falls after the epochs named, on a new best too (it
    is saved first, so the restart is from it), and never after the others, however flat."""
    scripted_validation(monkeypatch, elbo=[10.0, 9.0, 9.5, 9.7, 9.8])    # a plateau rule would decay after 4
    weights = lambda model: {k: v.clone() for k, v in model.state_dict().items()}
    seen, validated, real_opts, real_eval = [], [], lagvae.make_optimizers, lagvae.evaluate
    monkeypatch.setattr(lagvae, "make_optimizers", lambda model, cfg, lr: seen.append((lr, weights(model)))
                        or real_opts(model, cfg, lr))
    monkeypatch.setattr(lagvae, "evaluate", lambda model, *a, desc="eval", **kw: validated.append(weights(model))
                        or real_eval(model, *a, desc=desc, **kw))
    out = tmp_path / "run"
    cfg = lagvae.resolve_config({"preset": "tiny", "epochs": 5, "iw_samples": 0, "decay_at": "2,5", "lr": 0.5,
                                 "quiet": True, "out": str(out)})
    assert lagvae.mode_name(cfg) == "basic+decayat"
    lagvae.train(cfg)
    assert [r["lr"] for r in lagvae.read_jsonl(out / "log.jsonl")] == [0.5, 0.5, 0.25, 0.25, 0.25]
    best = torch.load(out / "model.pt")
    assert best["epoch"] == 2 and [lr for lr, _ in seen] == [0.5, 0.25, 0.125]
    assert all(torch.equal(seen[1][1][k], v) and torch.equal(validated[1][k], v) for k, v in best["model"].items())


def test_decay_at_a_run_repeats_its_decays(tmp_path):
    """A run directory stands for the epochs after which its lr fell, and for its last epoch where the
    decays ended it short of --epochs; config.json of the new run names the epochs, not the folder."""
    def run(lrs, epochs, finished=True):
        d = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"config": {"epochs": epochs}}))
        (d / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "lr": lr}) + "\n" for e, lr in enumerate(lrs, 1)))
        if finished:
            (d / "result.json").write_text("{}")
        return str(d)
    decay_at = lambda d: lagvae.train_config({"preset": "tiny", "decay_at": d})[0].decay_at
    assert decay_at(run([1, 1, 0.5, 0.5, 0.25, 0.25], 100)) == "2,4,6"        # the last ended it
    assert decay_at(run([1, 1, 0.5, 0.5, 0.25, 0.25], 6)) == "2,4"            # --epochs ended it
    assert decay_at(run([1, 1, 1], 3)) == "never"
    with pytest.raises(lagvae.UsageError, match="not a finished run"):
        decay_at(run([1, 0.5], 100, finished=False))


@pytest.mark.parametrize("mi,patience,aggressive", [
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 2, [1, 1, 1, 1, 1, 1]),    # MI climbs: aggressive throughout
    ([0.1, 0.2, 0.15, 0.1, 0.3, 0.4], 2, [1, 1, 1, 1, 0, 0]),   # two epochs without a new best end it for good
    ([0.1, 0.2, 0.15, 0.3, 0.2, 0.1], 2, [1, 1, 1, 1, 1, 1]),   # a new best resets the patience
    ([0.1, 0.2, 0.15, 0.3, 0.4, 0.5], 1, [1, 1, 1, 0, 0, 0]),   # patience 1: the first fall ends it
])
def test_aggressive_training_ends_when_validation_mi_stops_climbing(data_env, tmp_path, monkeypatch, mi, patience,
                                                                   aggressive):
    """Sec. 4.2 through the whole loop: end_epoch feeds each epoch's validation MI to the switch, and
    the epochs after it has ended train jointly (log rows say which, and count the steps)."""
    scripted_validation(monkeypatch, mi_full=mi)
    out = tmp_path / "run"
    # two batches an epoch: the switch acts between epochs, so their number is what matters
    lagvae.train(lagvae.resolve_config({"preset": "tiny", "aggressive": True, "epochs": 6, "iw_samples": 0,
                                        "subset": 16, "mi_patience": patience, "decay_patience": 100,
                                        "quiet": True, "out": str(out)}))
    log = lagvae.read_jsonl(out / "log.jsonl")
    assert [int(r["aggressive"]) for r in log] == aggressive
    for r in log:
        assert (r["steps_encoder"] > 0 and r["steps_joint"] == 0) if r["aggressive"] else \
            (r["steps_encoder"] == r["steps_decoder"] == 0 and r["steps_joint"] > 0)


def test_an_lr_decay_restarts_from_the_best_model(data_env, tmp_path, monkeypatch):
    """App. B: when validation -ELBO stops improving the lr decays and training continues from the
    best model so far, not from the latest weights."""
    scripted_validation(monkeypatch, elbo=[10.0, 9.0, 9.5, 9.7, 9.8, 9.9])     # best at epoch 2
    seen = []
    real = lagvae.make_optimizers

    def make_optimizers(model, cfg, lr):
        seen.append((lr, {k: v.clone() for k, v in model.state_dict().items()}))
        return real(model, cfg, lr)
    monkeypatch.setattr(lagvae, "make_optimizers", make_optimizers)
    out = tmp_path / "run"
    lagvae.train(lagvae.resolve_config({"preset": "tiny", "epochs": 6, "iw_samples": 0, "decay_patience": 2,
                                        "max_decay": 10, "lr": 0.5, "lr_decay": 0.5, "quiet": True,
                                        "out": str(out)}))
    assert [r["lr"] for r in lagvae.read_jsonl(out / "log.jsonl")] == [0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    best = torch.load(out / "model.pt")
    assert best["epoch"] == 2
    decays = [(lr, w) for lr, w in seen if lr < 0.5]
    assert [lr for lr, _ in decays] == [0.25, 0.125]         # at the ends of epochs 4 and 6
    for _, w in decays:
        for k, v in best["model"].items():
            assert torch.equal(w[k], v), k
