"""Section 2: the text VAE's shapes, initialization and likelihood."""
import torch

import pytest

import lagvae
from conftest import random_batch, random_images, tiny_image_model, tiny_model


def test_encode_and_likelihood_shapes():
    model, cfg = tiny_model()
    x = random_batch(batch=4, length=9)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, cfg.nz)
    assert model.log_px_given_z(x, torch.randn(4, 3, cfg.nz)).shape == (4, 3)
    assert model.n_targets(x) == 4 * 8


def test_initialization_ranges():
    model, _ = tiny_model()
    for name, p in model.named_parameters():
        bound = 0.1 if "embed" in name else 0.01
        assert p.abs().max() <= bound, name
        assert p.abs().max() > bound / 2, name          # actually drawn from the range, not zeros


def test_likelihood_is_normalized_over_the_vocabulary():
    """For the one-token sequences <s> w, p(w | <s>, z) sums to 1 over the vocabulary, and a longer
    sequence's log-likelihood is the sum of its prefix's and the next token's terms."""
    model, cfg = tiny_model(vocab=9, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.pred.weight)
        z = torch.randn(1, 1, cfg.nz, dtype=torch.float64).expand(9, 1, cfg.nz)
        first = model.log_px_given_z(torch.tensor([[1, w] for w in range(9)]), z)[:, 0]
        assert torch.allclose(first.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        x = torch.tensor([[1, w, 2] for w in range(9)])
        assert (model.log_px_given_z(x, z)[:, 0] < first).all()


def test_dropout_only_in_training():
    model, cfg = tiny_model(dropout_in=0.5, dropout_out=0.5)
    x, z = random_batch(), torch.randn(5, 1, cfg.nz)
    model.eval()
    assert torch.equal(model.log_px_given_z(x, z), model.log_px_given_z(x, z))
    model.train()
    assert not torch.equal(model.log_px_given_z(x, z), model.log_px_given_z(x, z))


def test_z_reaches_the_likelihood():
    model, cfg = tiny_model()
    model.eval()
    x = random_batch()
    z = torch.zeros(5, 1, cfg.nz, requires_grad=True)
    model.log_px_given_z(x, z).sum().backward()
    assert (z.grad.abs().sum(-1) > 0).all()


# ------------------------------------------------------------------------------------------------
# Image VAE: ResNet encoder, PixelCNN decoder

@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_pixelcnn_is_autoregressive(preset):
    """In eval mode (batch norm on running statistics, as in evaluation) the logit of pixel (r, c)
    has zero gradient w.r.t. every pixel at or after (r, c) in raster order, and a non-zero one
    w.r.t. some earlier pixel."""
    torch.manual_seed(0)
    cfg = lagvae.resolve_config({"data": "omniglot", "preset": preset})
    model = lagvae.ImageVAE(cfg).eval()
    z = torch.randn(1, cfg.nz)
    for r, c in [(0, 0), (5, 9), (14, 14), (27, 27), (20, 0)]:
        x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.5)).requires_grad_()
        model.decoder.logits(x, z)[0, 0, r, c].backward()
        g = x.grad[0, 0].abs()
        later = torch.zeros(28, 28, dtype=torch.bool)
        later[r, c:] = True
        later[r + 1:] = True
        assert g[later].sum() == 0
        if (r, c) != (0, 0):
            assert g[~later].sum() > 0


def test_masks_types_a_and_b():
    a = lagvae.MaskedConv2d(2, 3, 5, "A", masked_in=1).mask
    b = lagvae.MaskedConv2d(2, 3, 5, "B").mask
    assert a[0, 0, 2, 2] == 0 and b[0, 0, 2, 2] == 1          # centre: A excludes, B includes
    assert a[0, 0, 2, :2].all() and a[0, 0, :2].all() and not a[0, 0, 3:].any() and not a[0, 0, 2, 3:].any()
    assert a[0, 1].all()                                       # the z maps are not masked


def test_z_reaches_every_pixel():
    model, cfg = tiny_image_model()
    model.eval()
    x = random_images(1)
    z = torch.randn(1, cfg.nz)
    # forward mode: one pass per latent dimension instead of one backward pass per pixel
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        jac = torch.stack([fwAD.unpack_dual(model.decoder.logits(x, fwAD.make_dual(z, e[None]))).tangent[0, 0]
                           for e in torch.eye(cfg.nz)], -1)
    assert jac.shape == (28, 28, cfg.nz) and (jac.abs().sum(-1) > 0).all()


def test_image_shapes_and_bernoulli_likelihood():
    model, cfg = tiny_image_model(dtype=torch.float64)
    model.eval()
    x = random_images(3).double()
    mu, logvar = model.encode(x)
    assert mu.shape == (3, cfg.nz)
    z = torch.randn(3, 2, cfg.nz, dtype=torch.float64)
    ll = model.log_px_given_z(x, z)
    assert ll.shape == (3, 2) and (ll < 0).all()
    p = torch.sigmoid(model.decoder.logits(x, z[:, 0]))
    manual = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(ll[:, 0], manual)


def test_shifted_initialization_starts_away_from_the_origin():
    model, _ = tiny_model(shifted_init=True)
    for name, p in model.named_parameters():
        lo, hi = (0.0, 0.2) if "embed" in name else (0.04, 0.06)
        assert lo <= p.min().item() and p.max().item() <= hi, name
    mu, _ = model.encode(random_batch())
    assert (mu > 0).all()                 # App. G: positive weights give positive encoder outputs
