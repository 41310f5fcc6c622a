"""Section 3: KL, MI (Eq. 5), aggregate KL, active units and the importance-weighted bound."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from conftest import random_batch, tiny_model
from lagvae import (active_units, gaussian_kl, iw_log_weights, iw_nll, iw_nll_groups, log_aggregate_posterior,
                    log_gaussian, mutual_info, mutual_info_draws, objective, sample_z)

# 0 or at least 1e-3 away from it, so "KL = 0 only at the prior" is decidable in float64.
floats = st.one_of(st.just(0.0), st.floats(1e-3, 3), st.floats(-3, -1e-3))
encodings = st.integers(2, 40).flatmap(lambda n: st.integers(1, 4).flatmap(lambda d: st.tuples(
    arrays(np.float64, (n, d), elements=floats), arrays(np.float64, (n, d), elements=floats))))


def aggregate_kl(mu, logvar, z):
    """Monte Carlo KL(q(z) || p(z)) at samples z_i ~ q(z|x_i), from the mixture's log-density."""
    return (log_aggregate_posterior(z, mu, logvar) - log_gaussian(z, torch.zeros_like(z), torch.zeros_like(z))).mean()


@given(encodings)
def test_kl_nonnegative_and_zero_only_at_prior(enc):
    mu, logvar = map(torch.from_numpy, enc)
    kl = gaussian_kl(mu, logvar)
    assert (kl >= 0).all()
    at_prior = (mu == 0).all(1) & (logvar == 0).all(1)
    assert torch.all((kl < 1e-12) == at_prior)


@given(encodings, st.integers(0, 2 ** 31 - 1))
def test_kl_decomposition_exact_with_shared_samples(enc, seed):
    """mean_i [log q(z_i|x_i) - log p(z_i)] = MI + KL(q(z)||p) at the same samples (Eq. 5)."""
    mu, logvar = map(torch.from_numpy, enc)
    z = sample_z(mu, logvar, 1, torch.Generator().manual_seed(seed))[:, 0]
    kl_mc = (log_gaussian(z, mu, logvar) - log_gaussian(z, torch.zeros_like(z), torch.zeros_like(z))).mean()
    total = mutual_info(mu, logvar, z, analytic=False) + aggregate_kl(mu, logvar, z)
    assert float(kl_mc) == pytest.approx(float(total), abs=1e-9, rel=1e-12)


def test_kl_decomposition_analytic_within_monte_carlo_error():
    g = torch.Generator().manual_seed(1)
    n = 2000
    mu = torch.randn(n, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, 3, generator=g, dtype=torch.float64) - 1
    z = sample_z(mu, logvar, 1, g)[:, 0]
    lhs = gaussian_kl(mu, logvar).mean()
    rhs = mutual_info(mu, logvar, z) + aggregate_kl(mu, logvar, z)
    # The two sides differ only through log q(z_i|x_i) vs its expectation: bound by 5 standard errors.
    log_q = log_gaussian(z, mu, logvar)
    se = float(log_q.std() / math.sqrt(n))
    assert abs(float(lhs - rhs)) < 5 * se
    assert se < 0.05


@given(encodings, st.integers(0, 2 ** 31 - 1))
def test_mi_at_most_log_mixture_size(enc, seed):
    mu, logvar = map(torch.from_numpy, enc)
    z = sample_z(mu, logvar, 1, torch.Generator().manual_seed(seed))[:, 0]
    assert float(mutual_info(mu, logvar, z, analytic=False)) <= math.log(len(mu)) + 1e-9


def test_mi_reaches_log_n_for_separated_encodings_and_zero_when_identical():
    n = 512
    g = torch.Generator().manual_seed(0)
    mu = torch.arange(n, dtype=torch.float64)[:, None] * 100
    logvar = torch.zeros(n, 1, dtype=torch.float64)
    z = sample_z(mu, logvar, 1, g)[:, 0]
    assert float(mutual_info(mu, logvar, z, analytic=False)) == pytest.approx(math.log(n), abs=1e-9)
    # The analytic entropy replaces a sample mean of log q(z|x) (std 1/sqrt(2) per row): 5 s.e.
    assert float(mutual_info(mu, logvar, z)) == pytest.approx(math.log(n), abs=5 * 0.71 / math.sqrt(n))
    same = torch.zeros_like(mu)
    z = sample_z(same, logvar, 1, g)[:, 0]
    assert float(mutual_info(same, logvar, z, analytic=False)) == pytest.approx(0, abs=1e-9)
    assert float(mutual_info(same, logvar, z)) == pytest.approx(0, abs=5 * 0.71 / math.sqrt(n))


def test_aggregate_posterior_chunking_is_exact():
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(50, 2, generator=g, dtype=torch.float64), torch.randn(50, 2, generator=g, dtype=torch.float64)
    z = sample_z(mu, logvar, 1, g)[:, 0]
    from lagvae import log_aggregate_posterior
    assert torch.allclose(log_aggregate_posterior(z, mu, logvar, chunk=7),
                          log_aggregate_posterior(z, mu, logvar, chunk=50), atol=1e-12)


def test_active_units_on_constructed_encodings():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.0])        # variances 1, .25, .04, .0025, 0
    mu = torch.randn(20000, 5, generator=g, dtype=torch.float64) * scales + 3.0
    assert active_units(mu) == 3
    assert active_units(mu, threshold=0.001) == 4
    assert active_units(torch.zeros(10, 4)) == 0


def test_active_units_counts_a_variance_over_0_01_strictly_and_over_examples():
    """Burda et al.'s threshold, 0.01, strict: a dimension whose posterior means vary by exactly 0.01
    is not active, one at 0.015 is; the variance is over examples (rows), not over dimensions."""
    at = math.sqrt(0.02)                       # var([0, at]) is 0.01 to the last bit in float64
    mu = torch.tensor([[0.0, 0.0, 0.0, 5.0], [at, math.sqrt(0.03), math.sqrt(0.01), 5.0]], dtype=torch.float64)
    assert float(mu[:, 0].var()) == 0.01
    assert active_units(mu) == 1               # only the 0.015 column; a constant row of 5s varies across dims


def z_dependent(model, scale=1.0):
    """Make the tiny model's decoder depend on z and its encoder informative but imperfect,
    so the gaps between the bounds are visible."""
    with torch.no_grad():
        for w in (model.encoder.head.linear.weight, model.decoder.trans_z.weight,
                  model.decoder.lstm.weight_ih_l0, model.decoder.pred.weight):
            w.normal_(0, scale)


def test_iw_bound_above_elbo_and_non_decreasing_in_k():
    model, cfg = tiny_model(dtype=torch.float64)
    z_dependent(model)
    model.eval()
    reps, x = 400, random_batch(batch=3)
    xr = x.repeat(reps, 1)                      # expectations by averaging over repeated rows
    torch.manual_seed(0)
    with torch.no_grad():
        _, rec, kl = objective(model, xr, cfg)
        elbo_draws = -(rec + kl).view(reps, -1)
        iw1_draws = (-iw_nll(model, xr, 1)).view(reps, -1)
        bounds = {k: (-iw_nll(model, xr, k, chunk=7)).view(reps, -1).mean(0) for k in (5, 50)}
    elbo, bounds[1] = elbo_draws.mean(0), iw1_draws.mean(0)
    se = ((elbo_draws.var(0) + iw1_draws.var(0)) / reps).sqrt()
    # K = 1 is the ELBO in expectation (within 4 standard errors); more samples tighten the bound.
    assert ((bounds[1] - elbo).abs() < 4 * se).all()
    assert (bounds[5] > bounds[1]).all() and (bounds[50] > bounds[5]).all()
    assert ((bounds[50] - elbo) > 4 * se).all()


def test_iw_equals_exact_log_likelihood_when_decoder_ignores_z():
    model, cfg = tiny_model(dtype=torch.float64)
    with torch.no_grad():
        model.encoder.head.linear.weight.zero_()                    # q(z|x) = p(z)
        model.decoder.trans_z.weight.zero_()                   # z reaches neither the state ...
        model.decoder.lstm.weight_ih_l0[:, cfg.ni:].zero_()    # ... nor the inputs
    model.eval()
    x = random_batch()
    with torch.no_grad():
        exact = -model.log_px_given_z(x, torch.randn(x.size(0), 1, cfg.nz, dtype=torch.float64))[:, 0]
        assert torch.allclose(iw_nll(model, x, 37, chunk=10), exact, atol=1e-10)


def test_grouped_bounds_are_the_bounds_of_each_groups_draws():
    """One set of draws gives the K-sample bound of each disjoint group of K: iw_nll on the group's own
    draws, iw_nll itself at K = all draws, and at K = 1 the Monte Carlo -ELBO of each draw."""
    model, _ = tiny_model(dtype=torch.float64)
    model.eval()
    x = random_batch()
    with torch.no_grad():
        log_w = iw_log_weights(model, x, 60, chunk=7, gen=torch.Generator().manual_seed(3))
        assert torch.equal(iw_nll_groups(log_w, 60)[:, 0], iw_nll(model, x, 60, chunk=7,
                                                                   gen=torch.Generator().manual_seed(3)))
    groups = iw_nll_groups(log_w, 20)
    assert groups.shape == (5, 3)
    for j in range(3):
        own = -(torch.logsumexp(log_w[:, 20 * j:20 * (j + 1)], 1) - math.log(20))
        assert torch.allclose(groups[:, j], own, rtol=0, atol=1e-12)
    assert torch.equal(iw_nll_groups(log_w, 1), -log_w)


@pytest.mark.slow
def test_iw_bound_on_the_image_vae():
    from conftest import random_images, tiny_image_model
    model, cfg = tiny_image_model(dtype=torch.float64)
    model.eval()
    reps, x = 50, random_images(2).double()     # the gap is 6-8 standard errors at 50 repeats
    xr = x.repeat(reps, 1, 1, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        _, rec, kl = objective(model, xr, cfg)
        elbo_draws = -(rec + kl).view(reps, -1)
        bound = (-iw_nll(model, xr, 20, chunk=7)).view(reps, -1).mean(0)
    se = (elbo_draws.var(0) / reps).sqrt()
    assert (bound > elbo_draws.mean(0) + 4 * se).all()


def linear_gaussian_posterior_mean():
    """A 'decoder' with log p(x|z) = log N(x; a z, s^2) for scalar x and z: the exact posterior mean
    under N(0, 1) is a x / (a^2 + s^2)."""
    a, s2 = 1.7, 0.5

    class LinearGaussian(torch.nn.Module):
        def log_px_given_z(self, x, z):
            return -0.5 * ((x[:, None, :] - a * z) ** 2 / s2 + math.log(2 * math.pi * s2)).sum(-1)
    return LinearGaussian(), a, s2


@pytest.mark.parametrize("stride", [0.1, 0.05])
def test_grid_posterior_mean_is_exact_for_a_linear_gaussian_decoder(stride):
    from lagvae import posterior_mean_grid
    model, a, s2 = linear_gaussian_posterior_mean()
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    with torch.no_grad():
        got = posterior_mean_grid(model, x, stride=stride)
    assert torch.allclose(got.double(), a * x[:, 0] / (a ** 2 + s2), atol=1e-5)


def test_grid_posterior_mean_stable_to_halving_the_stride():
    from conftest import tiny_model
    from lagvae import posterior_mean_grid
    model, cfg = tiny_model(nz=1)
    z_dependent(model, 0.5)
    model.eval()
    x = random_batch(batch=6)
    coarse, fine = posterior_mean_grid(model, x, stride=0.1), posterior_mean_grid(model, x, stride=0.05)
    assert torch.allclose(coarse, fine, atol=1e-3) and coarse.abs().max() > 0.01


def test_mi_over_several_draws_is_the_mean_of_single_draw_estimates():
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(40, 3, generator=g, dtype=torch.float64)
    z = sample_z(mu, logvar, 6, g)
    assert mutual_info_draws(mu, logvar, z[:, :1]) == mutual_info(mu, logvar, z[:, 0])     # one draw: as before
    single = [float(mutual_info(mu, logvar, z[:, s])) for s in range(6)]
    assert float(mutual_info_draws(mu, logvar, z)) == pytest.approx(np.mean(single), abs=1e-12)


@pytest.mark.slow
def test_more_mi_draws_shrink_the_noise_of_a_collapsed_posterior():
    """Identical posteriors have MI 0; one draw per row on 500 rows of nz 32 scatters by ~0.15 nat
    (what flipped text runs between "escaped" and "between"), 20 draws by far less."""
    n, nz = 500, 32
    mu, logvar = torch.zeros(n, nz), torch.zeros(n, nz)          # a noise property, not an identity: float32
    spread = lambda s: np.std([float(mutual_info_draws(mu, logvar, sample_z(mu, logvar, s, torch.Generator().manual_seed(k))))
                               for k in range(8)])
    one, many = spread(1), spread(20)
    assert 0.05 < one < 0.4 and many < one / 2.5


# ------------------------------------------------------------------------------------------------
# The training objective against the estimators: one character in `objective` changes every table.

def closed_form_kl_dims(mu, logvar):
    """KL(q(z|x) || N(0, I)) per dimension from torch.distributions, an oracle written elsewhere."""
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    return torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu)))


def spread_head(model, scales):
    """Scale the encoder head's rows (mu's, then logvar's) so each dimension's KL is far from 0, where
    the formula is not lost to cancellation."""
    with torch.no_grad():
        model.encoder.head.linear.weight.mul_(torch.tensor(scales * 2, dtype=torch.float64)[:, None])


@pytest.mark.parametrize("kl_weight", [1.0, 0.3, 2.5])
def test_training_objective_is_rec_plus_weighted_kl_of_the_evaluation_estimator(kl_weight):
    """Eq. 2 as trained: mean rec + weight x mean KL, the KL being the evaluation's (the weight of
    annealing and beta on the KL term, never on the reconstruction)."""
    model, cfg = tiny_model(nz=3, dtype=torch.float64)
    model.eval()
    spread_head(model, [1e3, 3e3, 1e4])
    x = random_batch()
    torch.manual_seed(7)
    loss, rec, kl = objective(model, x, cfg, kl_weight)
    mu, logvar = model.encode(x)
    assert torch.allclose(kl, closed_form_kl_dims(mu, logvar).sum(-1), rtol=1e-12, atol=0)
    assert torch.allclose(kl, gaussian_kl(mu, logvar), rtol=1e-12, atol=0)
    torch.manual_seed(7)
    assert torch.allclose(rec, -model.log_px_given_z(x, sample_z(mu, logvar))[:, 0], rtol=1e-12)
    assert float(loss.detach()) == pytest.approx(float((rec.mean() + kl_weight * kl.mean()).detach()), rel=1e-12)


@pytest.mark.parametrize("fb_at", [0.25, 0.5, 0.75])
def test_free_bits_clamp_each_dimensions_batch_mean_kl(fb_at):
    """Kingma et al. 2016: sum_d max(lambda, mean_batch KL_d), with lambda between the dimensions'
    KLs so that a clamp of the total (or of each example's KL) gives another loss."""
    model, cfg = tiny_model(nz=4, dtype=torch.float64)
    model.eval()
    spread_head(model, [300.0, 1e3, 3e3, 1e4])       # dimensions far apart in KL: some above lambda, some below
    x = random_batch()
    mu, logvar = model.encode(x)
    per_dim = closed_form_kl_dims(mu, logvar).mean(0).detach()
    lam = float(torch.quantile(per_dim, fb_at))
    assert (per_dim < lam).any() and (per_dim > lam).any()
    fb = dataclasses.replace(cfg, free_bits=lam)
    for weight in (1.0, 0.5):
        torch.manual_seed(3)
        loss, rec, kl = objective(model, x, fb, weight)
        expect = rec.mean() + weight * per_dim.clamp(min=lam).sum()
        assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-12)
        assert torch.allclose(kl, closed_form_kl_dims(mu, logvar).sum(-1), rtol=1e-12)    # logged KL unclamped
