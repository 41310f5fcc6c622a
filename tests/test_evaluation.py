"""Sections 5 and 7: decoding text from z, the reconstruction score, encoding examples in order."""
import itertools
import json

import pytest
import torch

import lagvae
from conftest import DEVICES, random_batch, tiny_model
from lagvae import BOS, EOS, PAD, decode


def lively_model(vocab=12, seed=0, **over):
    """A tiny text VAE with large random weights, so that decodings depend on z and vary in length."""
    model, cfg = tiny_model(vocab, seed, **over)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1)
    return model, cfg


def test_beam_size_one_is_greedy_and_rows_decode_independently():
    model, cfg = lively_model()
    z = torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(0))
    greedy = decode(model, z, 10)
    assert torch.equal(decode(model, z, 10, "beam", beam_size=1), greedy)
    assert len({tuple(r) for r in greedy.tolist()}) > 1             # z matters: not one sentence for all
    for method, k in (("greedy", 1), ("beam", 3)):
        together = decode(model, z, 10, method, k)
        for i in (0, 7):
            alone = decode(model, z[i:i + 1], 10, method, k)[0]
            assert together[i, :len(alone)].tolist() == alone.tolist()
            assert (together[i, len(alone):] == PAD).all()


def test_beam_rows_end_in_eos_or_at_max_len():
    model, cfg = lively_model()
    out = decode(model, torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(1)), 6, "beam", beam_size=4)
    assert out.size(1) <= 6
    ended = 0
    for row in out.tolist():
        words = row[:row.index(EOS)] if EOS in row else row
        assert PAD not in words and BOS not in words
        if EOS in row:
            ended += 1
            assert all(t == PAD for t in row[len(words) + 1:])
        else:
            assert len(row) == 6
    assert 0 < ended < 16                                           # both kinds of ending occur


def test_wide_beam_finds_the_most_likely_sequence():
    """With a beam wider than the number of prefixes, beam search is exhaustive: it returns the
    sequence (ended by </s>, or cut at max_len) of highest log-likelihood under the teacher-forced
    decoder, so step-by-step decoding is conditioned on z exactly as log p(x|z) is."""
    model, cfg = lively_model(vocab=7)
    model.eval()
    z = torch.randn(2, cfg.nz, generator=torch.Generator().manual_seed(2))
    words = range(3, 7)                                  # <unk> and 3 words; PAD and BOS are never emitted
    candidates = ([[EOS]] + [list(p) + [EOS] for n in (1, 2) for p in itertools.product(words, repeat=n)]
                  + [list(p) for p in itertools.product(words, repeat=3)])          # cut at max_len 3
    with torch.no_grad():
        best = [max(candidates, key=lambda c: float(model.log_px_given_z(torch.tensor([[BOS] + c]), z[i:i + 1, None])))
                for i in range(2)]
    out = decode(model, z, 3, "beam", beam_size=64)
    for i in range(2):
        assert [t for t in out[i].tolist() if t != PAD] == best[i]


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_at_low_temperature_is_greedy(device):
    model, cfg = lively_model()
    model.to(device)
    z = torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(3)).to(device)
    gen = torch.Generator(device).manual_seed(0)
    greedy = decode(model, z, 10)
    assert torch.equal(decode(model, z, 10, "sample", temperature=1e-4, gen=gen), greedy)
    hot = decode(model, z, 10, "sample", temperature=1.0, gen=gen)
    assert not torch.equal(hot, greedy)


def test_decoding_has_no_dropout_and_keeps_the_training_mode():
    model, cfg = lively_model(dropout_in=0.5, dropout_out=0.5)
    model.train()
    z = torch.randn(8, cfg.nz, generator=torch.Generator().manual_seed(4))
    assert torch.equal(decode(model, z, 10), decode(model, z, 10))
    assert model.training


def test_reconstruction_hits_are_teacher_free():
    """A document that is the greedy decoding of its mu scores every position; changing one token
    costs exactly that position, since the decoder continues from its own output, not the input's."""
    model, cfg = lively_model()
    model.eval()
    mu = torch.randn(16, cfg.nz, generator=torch.Generator().manual_seed(5))
    y = decode(model, mu, 8)
    keep = [i for i, row in enumerate(y.tolist()) if EOS not in row]      # documents need no </s> here
    assert len(keep) >= 2
    x = torch.cat([torch.full((len(keep), 1), BOS), y[keep]], 1)
    assert lagvae.reconstruction_hits(model, x, mu[keep]) == x.numel() - len(keep)
    x[:, 3] = torch.where(x[:, 3] == 4, 5, 4)
    assert lagvae.reconstruction_hits(model, x, mu[keep]) == x.numel() - 2 * len(keep)


def test_rec_acc_in_evaluate_is_the_hit_rate():
    model, cfg = lively_model()
    batches = [random_batch(batch=4, length=6, seed=s) for s in range(3)]
    out = lagvae.evaluate(model, batches, cfg, rec_acc=True)
    model.eval()
    hits = sum(lagvae.reconstruction_hits(model, x, model.encode(x)[0]) for x in batches)
    assert out["rec_acc"] == hits / sum(model.n_targets(x) for x in batches)
    assert 0 <= out["rec_acc"] <= 1
    others = torch.cat([model.encode(x)[0] for x in batches]).roll(1, 0).split(4)
    other = sum(lagvae.reconstruction_hits(model, x, m) for x, m in zip(batches, others))
    assert out["rec_acc_other"] == other / sum(model.n_targets(x) for x in batches)


def test_rec_acc_equals_its_baseline_when_the_decoder_ignores_z():
    model, cfg = lively_model()
    with torch.no_grad():                               # z reaches the decoder through these two only
        model.decoder.trans_z.weight.zero_()
        model.decoder.lstm.weight_ih_l0[:, -cfg.nz:].zero_()
    batches = [random_batch(batch=4, length=6, seed=s) for s in range(3)] + [random_batch(batch=1, length=6, seed=9)]
    out = lagvae.evaluate(model, batches, cfg, rec_acc=True)
    assert out["rec_acc"] == out["rec_acc_other"]


def test_encode_examples_keeps_the_order_of_documents_of_any_length():
    model, cfg = lively_model()
    model.eval()
    g = torch.Generator().manual_seed(6)
    docs = [random_batch(batch=1, length=int(n), seed=i)[0] for i, n in enumerate(torch.randint(3, 8, (11,), generator=g))]
    mu, logvar = lagvae.encode_examples(model, docs, batch_size=2)
    assert mu.shape == logvar.shape == (11, cfg.nz)
    with torch.no_grad():
        for i, d in enumerate(docs):
            m, lv = model.encode(d[None])
            assert torch.allclose(mu[i], m[0], atol=1e-6) and torch.allclose(logvar[i], lv[0], atol=1e-6)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_decoding_a_model_without_latent(method):
    """--lm: z has no dimensions; every decoding method still runs (it is the language model's)."""
    model, cfg = lively_model(lm=True)
    out = decode(model, torch.zeros(3, 0), 5, method, beam_size=2, gen=torch.Generator().manual_seed(0))
    assert out.size(0) == 3 and out.size(1) <= 5


def test_more_mi_draws_change_only_the_mi_estimates():
    """The extra MI draws come from their own generator: every other test number stays as it was."""
    model, cfg = lively_model()
    batches = [random_batch(batch=4, length=6, seed=s) for s in range(3)]
    one = lagvae.evaluate(model, batches, cfg, iw_samples=5, rec_acc=True)
    many = lagvae.evaluate(model, batches, cfg, iw_samples=5, rec_acc=True, mi_samples=8)
    assert {k for k in one if one[k] != many[k]} == {"mi", "mi_full"}
    assert lagvae.evaluate(model, batches, cfg, iw_samples=5, rec_acc=True, mi_samples=1) == one


def test_eval_seeds_report_the_spread_of_the_evaluation_itself(synth_root, tmp_path, capsys):
    """App. D: one model, N evaluation seeds; the mean and variance of each number, and seed k's
    numbers are those of an evaluation whose noise is seeded with k."""
    import json
    run = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--data-dir", str(synth_root),
                        "--iw-samples", "5", "--out", str(run)]) == 0
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(run / "model.pt"), "--eval-seeds", "3", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eval_seeds"] == 3 and len(out["per_seed"]) == 3 and set(out["mean"]) == {"iw_nll", "elbo", "kl", "mi", "au"}
    nll = [r["iw_nll"] for r in out["per_seed"]]
    assert out["mean"]["iw_nll"] == pytest.approx(sum(nll) / 3) and out["var"]["iw_nll"] > 0     # the noise moves it
    model, cfg, corpus = lagvae.load_checkpoint(run / "model.pt")
    test = corpus.batches("test", cfg.batch_size, limit=cfg.max_test)
    again = lagvae.evaluate(model.eval(), test, lagvae.dataclasses.replace(cfg, seed=2), iw_samples=5)
    assert again["iw_nll"] == out["per_seed"][2]["iw_nll"]
    assert lagvae.main(["eval", "--ckpt", str(run / "model.pt"), "--eval-seeds", "2", "--update"]) == 2


def test_a_saved_model_evaluated_with_the_defaults_gives_its_result_and_writes_nothing(synth_root, tmp_path):
    """evaluate_checkpoint(ckpt) as the Python API calls it: the run's own test numbers (reconstruction
    accuracy included), result.json untouched; export_latents(ckpt) and the evaluation spread with their
    defaults; the spread is a row of Tables 7-8."""
    import json
    import numpy as np
    run = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--data-dir", str(synth_root),
                        "--iw-samples", "5", "--out", str(run)]) == 0
    saved = (run / "result.json").read_bytes()
    again = lagvae.evaluate_checkpoint(run / "model.pt")
    assert (run / "result.json").read_bytes() == saved
    keys = ("iw_nll", "elbo", "kl", "mi", "au", "rec_acc", "n")
    assert {k: again[k] for k in keys} == {k: json.loads(saved)[k] for k in keys}
    mu = np.load(lagvae.export_latents(run / "model.pt"))["mu"]
    assert mu.shape == (json.loads(saved)["n"], lagvae.load_checkpoint(run / "model.pt")[1].nz)
    spread = lagvae.evaluate_checkpoint(run / "model.pt", eval_seeds=2)
    assert spread["mean"]["iw_nll"] == pytest.approx(sum(r["iw_nll"] for r in spread["per_seed"]) / 2)
    assert "| synthetic | VAE (Table 8) | 2 | " in lagvae.format_spread([spread])


def test_the_bound_tightens_with_k_on_the_same_draws_and_is_exact_without_a_latent(data_env, tmp_path, capsys):
    """`eval --bound`: one set of draws per evaluation seed, the bound at each K averaged over the
    documents, spread over disjoint groups; the LM's exact NLL is its result.json's on the same documents."""
    runs = {}
    for mode, flags in (("vae", []), ("lm", ["--lm"])):
        runs[mode] = tmp_path / mode
        assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--max-test", "40",
                            "--out", str(runs[mode]), *flags]) == 0
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(runs["vae"] / "model.pt"), "--bound", "100,1,10", "--max-test", "40",
                        "--eval-seeds", "2", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    b = r["bound"]
    assert r["n"] == 40 and r["eval_seeds"] == 2 and not r["exact"]
    assert [b[k]["groups"] for k in ("1", "10", "100")] == [200, 20, 2]
    assert b["1"]["mean"] > b["10"]["mean"] > b["100"]["mean"]          # tighter with more samples
    assert b["1"]["sd"] > b["10"]["sd"] > 0                              # and less noisy
    lm = lagvae.evaluate_checkpoint(str(runs["lm"] / "model.pt"), bound=[1, 10], max_test=40, quiet=True)
    assert lm["exact"] and list(lm["bound"]) == ["1"]
    exact = json.loads((runs["lm"] / "result.json").read_text())["iw_nll"]
    assert lm["bound"]["1"]["mean"] == pytest.approx(exact, rel=1e-6)      # float32 sums in another order


@pytest.mark.parametrize("value", ["1,3,10", "0,10", "x", "2000000"])
def test_bound_sample_counts_must_divide_the_largest(value, capsys):
    with pytest.raises(SystemExit) as e:
        lagvae.main(["eval", "--ckpt", "model.pt", "--bound", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bound: expected sample counts" in err[0]



def api_model():
    """A tiny text model as lagvae.load gives one: its config and vocabulary attached, in eval mode."""
    model, cfg = tiny_model(vocab=12)
    model.cfg, model.vocab = cfg, lagvae.datalib.SPECIALS + [f"w{i}" for i in range(8)]
    return model.eval()


def test_a_padded_batch_is_refused_never_read_as_words():
    model, cfg = tiny_model(vocab=12)
    x = random_batch(vocab=12, batch=2, length=6)
    x[0, 3], x[0, 4:] = 2, 0                       # a shorter sentence padded after its </s>
    for call in (lambda: lagvae.evaluate(model, [x], cfg), lambda: lagvae.iw_nll(model, x, 5)):
        with pytest.raises(lagvae.UsageError, match="<pad>"):
            call()


def test_sentences_are_batched_by_length_and_come_back_in_their_order():
    model = api_model()
    short, long = "w1 w2", "w3 w4 w5 w6 <s>"
    both = lagvae.nll(model, [long, short], k=10)
    assert both.shape == (2,) and torch.isfinite(both).all()
    assert torch.equal(lagvae.nll(model, [short, long], k=10), both.flip(0))       # the same draws, in order
    assert lagvae.nll(model, [short], k=10)[0] == both[1]
    mu, logvar = lagvae.encode(model, [long, short])
    ids = lagvae.datalib.encode_new_text(f"{long}\n{short}\n", model.vocab)[0]
    assert torch.equal(mu, lagvae.encode_examples(model, ids, 8)[0])
    assert len(lagvae.reconstruct(model, [long, short])) == 2 and len(lagvae.sample(model, 3)) == 3
    with pytest.raises(lagvae.UsageError, match="list of sentences"):
        lagvae.nll(model, "w1 w2")
