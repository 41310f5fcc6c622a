import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data as datalib  # noqa: E402
import lagvae  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A data root holding generated synthetic data (shared by every test of the session)."""
    root = tmp_path_factory.mktemp("data")
    datalib.prepare_synthetic(root)
    return root


@pytest.fixture
def data_env(synth_root, monkeypatch):
    monkeypatch.setenv("LAGVAE_DATA", str(synth_root))
    return synth_root


def tiny_model(vocab=12, seed=0, dtype=torch.float32, **over):
    torch.manual_seed(seed)
    cfg = lagvae.resolve_config({"preset": "tiny", **over})
    return lagvae.TextVAE(vocab, cfg).to(dtype), cfg


def random_batch(vocab=12, batch=5, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, vocab, (batch, length), generator=g)
    x[:, 0], x[:, -1] = 1, 2
    return x
