"""Section 2: the text VAE's shapes, initialization and likelihood."""
import torch

from conftest import random_batch, tiny_model


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
