import os
import sys
from pathlib import Path

# Tiny models step faster on one thread than on two, and on a loaded machine several times faster.
# Set before torch is imported, so the subprocesses that tests start inherit it too.
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests and fuzzers: 20 examples each by default, 500 with `--hypothesis-profile thorough`
# (or HYPOTHESIS_PROFILE=thorough); no deadline, as a loaded machine makes any example slow.
settings.register_profile("default", max_examples=20, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tests/mutate.py: mutmut's first pass maps tests to the functions they call, in this process (it keeps
# the mode in-process too). A test's subprocess, a CLI run in a temporary directory, must not inherit
# the mode: there it would look for mutmut's config and fail. Each mutant's own name is still inherited.
if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    del os.environ["MUTANT_UNDER_TEST"]

import data as datalib  # noqa: E402
import lagvae  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


SMALL_SYNTH = {"train": 2000, "valid": 500, "test": 500}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A data root holding generated synthetic data (shared by every test of the session): the published
    format and generator, 3,000 sentences instead of 20,000, which take 10-20 s to sample."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datalib, "SYNTH_SPLITS", SMALL_SYNTH)
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


@pytest.fixture(scope="session")
def omni_root(tmp_path_factory):
    """A data root with small Omniglot-format drawings (raw npz): enough characters that 2,000
    training images remain for validation, as in the paper's split."""
    root = tmp_path_factory.mktemp("omni")
    g = np.random.default_rng(0)
    for name, chars in (("images_background.npz", 140), ("images_evaluation.npz", 4)):
        x = np.ones((chars, 20, 105, 105), dtype=bool)
        r, c = g.integers(0, 70, (2, chars, 20))
        for i in range(chars):
            for d in range(20):
                x[i, d, r[i, d]:r[i, d] + 30, c[i, d]:c[i, d] + 8] = False
        (root / "omniglot" / "raw").mkdir(parents=True, exist_ok=True)
        np.savez(root / "omniglot" / "raw" / name, images=x)
    return root


def tiny_image_model(seed=0, dtype=torch.float32, **over):
    torch.manual_seed(seed)
    cfg = lagvae.resolve_config({"data": "omniglot", "preset": "tiny", **over})
    return lagvae.ImageVAE(cfg).to(dtype), cfg


def random_images(batch=4, seed=0):
    return torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def subprocess_train(root):
    """A tiny aggressive run long enough (200 sentences, 2 epochs) to be stopped within an epoch."""
    return [sys.executable, str(Path(__file__).resolve().parents[1] / "lagvae.py"), "train", "--preset", "tiny",
            "--subset", "200", "--epochs", "2", "--aggressive", "--iw-samples", "5", "--quiet", "--data-dir", str(root)]


@pytest.fixture(scope="session")
def uninterrupted_run(synth_root, tmp_path_factory):
    """subprocess_train never stopped (one thread, as the stopped runs it is compared with), once for
    the kill and signal tests."""
    import os
    import subprocess
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(subprocess_train(synth_root) + ["--out", str(out)], check=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out
