"""Section 10: the command line, run directories, resume and error messages."""
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import lagvae
from conftest import subprocess_train

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "log.jsonl", "model.pt", "result.json"}
LOG_KEYS = {"epoch", "train_elbo", "train_rec", "train_kl", "val_elbo", "val_rec", "val_kl", "val_mi",
            "val_mi_full", "val_au", "lr", "aggressive", "inner_steps", "seconds"}
RESULT_KEYS = {"iw_nll", "elbo", "rec", "kl", "mi", "mi_full", "au", "ppl", "train_seconds", "mode"}


@pytest.mark.parametrize("flags,mode", [([], "basic"), (["--aggressive"], "aggressive"),
                                        (["--aggressive", "--inner-steps", "3"], "aggressive-inner3")])
@pytest.mark.slow
def test_each_mode_writes_a_complete_run(data_env, tmp_path, flags, mode):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(out), *flags]) == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(LOG_KEYS <= r.keys() for r in rows)
    assert rows[0]["aggressive"] == mode.startswith("aggressive")
    if "--inner-steps" in flags:
        assert rows[0]["inner_steps"] == 3
    result = json.loads((out / "result.json").read_text())
    assert RESULT_KEYS <= result.keys() and result["mode"] == mode
    assert result["iw_nll"] <= result["elbo"] + 1.0      # IW bound is (nearly always) tighter
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["preset"] == "tiny" and config["torch"] == torch.__version__
    assert config["processor"] == lagvae.processor() and config["processor"]      # trajectories differ by CPU


def test_eval_reproduces_the_test_result(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(out)])
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(out / "model.pt"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "result.json").read_text())
    for key in ("iw_nll", "elbo", "kl", "mi", "au"):
        assert printed[key] == pytest.approx(saved[key], rel=1e-6)


def test_resume_continues_exactly(data_env, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    base = ["train", "--preset", "tiny", "--quiet", "--aggressive"]
    lagvae.main(base + ["--epochs", "2", "--out", str(straight)])
    lagvae.main(base + ["--epochs", "1", "--out", str(resumed)])
    lagvae.main(base + ["--epochs", "2", "--out", str(resumed), "--resume"])
    a, b = (json.loads((d / "result.json").read_text()) for d in (straight, resumed))
    for key in ("iw_nll", "elbo", "kl", "mi", "au", "epochs"):
        assert a[key] == b[key]
    assert len((resumed / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("argv,needle", [
    (["train", "--nz", "0"], "--nz"),
    (["train", "--preset", "huge"], "--preset"),
    (["train", "--data", "nosuch"], "nosuch"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--nz", "two"], "--nz"),
    (["train", "--no-such-flag"], "--no-such-flag"),
    (["eval", "--ckpt", "/nonexistent/model.pt"], "--ckpt"),
])
def test_bad_input_gives_one_line_and_exit_2(data_env, tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    try:
        rc = lagvae.main(argv + (["--quiet"] if argv[0] == "train" else []))
    except SystemExit as e:          # argparse's refusals exit from inside the parser
        rc = e.code
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


@pytest.mark.slow
def test_the_entry_point_exits_2_with_one_line(tmp_path):
    """The process boundary itself: `python lagvae.py` exits with main's code (the refusals above, in
    this process, check every kind of message)."""
    proc = subprocess.run([sys.executable, str(ROOT / "lagvae.py"), "train", "--nz", "0", "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--nz" in proc.stderr


def test_resume_without_checkpoint_starts_afresh(data_env, tmp_path):
    """A run killed in epoch 1 before its first last.pt is resumed by starting it again."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config": lagvae.asdict(lagvae.resolve_config({"preset": "tiny"}))}))
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--resume", "--out", str(out)]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


def test_a_finished_run_is_never_overwritten_silently(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)]
    assert lagvae.main(base) == 0
    before = (out / "result.json").read_text()
    assert lagvae.main(base + ["--seed", "1"]) == 2
    assert "--resume" not in one_line_error(capsys, str(out), "--overwrite", "--out DIR", "--seed 0 -> 1")
    assert lagvae.main(base) == 2           # the same settings: continuing it is offered too
    one_line_error(capsys, str(out), "--overwrite", "--out DIR", "--resume")
    assert (out / "result.json").read_text() == before
    (out / "snapshots.jsonl").write_text("stale\n")
    assert lagvae.main(base + ["--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 1
    assert not (out / "snapshots.jsonl").exists()            # nothing of the old run survives


@pytest.mark.parametrize("flags,ok", [(["--epochs", "3"], True), (["--iw-samples", "5"], True),
                                      (["--lr", "0.5"], False), (["--seed", "1"], False),
                                      (["--nz", "3"], False), (["--aggressive"], False)])
def test_resume_refuses_flags_that_change_the_run(data_env, tmp_path, capsys, flags, ok):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    code = lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out), "--resume", *flags])
    assert code == (0 if ok else 2)
    if not ok:
        one_line_error(capsys, "--resume", flags[0])


def test_out_on_a_file_is_refused(data_env, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(tmp_path / "f")]) == 2
    one_line_error(capsys, "--out", "is a file")


def test_a_second_writer_is_refused(data_env, tmp_path, capsys):
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:                  # as another live process would hold it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(out)]) == 2
        one_line_error(capsys, "another lagvae process")
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)]) == 0


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_is_exact(synth_root, uninterrupted_run, tmp_path):
    """SIGKILL a subprocess inside an aggressive epoch, after a timed checkpoint; the resumed run ends
    with the same log, result and weights as one that was never interrupted."""
    import signal
    import time
    base = subprocess_train(synth_root) + ["--checkpoint-minutes", "0.002"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = uninterrupted_run, tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(killed)], env=env)
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, "the run ended before its first timed checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "last.pt", weights_only=False)["state"]
    assert state["epoch"] == 1 and 0 < state["run"]["batch"], "not killed inside epoch 1"
    subprocess.run(base + ["--out", str(killed), "--resume"], check=True, env=env, timeout=600)
    untimed = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    assert untimed(lagvae.read_jsonl(straight / "log.jsonl")) == untimed(lagvae.read_jsonl(killed / "log.jsonl"))
    results = untimed(json.loads((d / "result.json").read_text()) for d in (straight, killed))
    assert results[0] == results[1]
    wa, wb = (torch.load(d / "model.pt", weights_only=False)["model"] for d in (straight, killed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("flags,mode", [
    (["--anneal"], "basic+anneal"),
    (["--anneal", "--kl-start", "0", "--warm-up-iters", "30"], "basic+anneal30"),
    (["--beta", "0.4"], "basic+beta0.4"),
    (["--aggressive", "--anneal"], "aggressive+anneal"),
    (["--savae"], "savae"),
    (["--savae", "--anneal", "--svi-steps", "2"], "savae+anneal"),
    (["--lm"], "lm"),
    (["--encoder-lr-mult", "0.5"], "basic+enclr0.5"),
    (["--free-bits", "0.1"], "basic+fb0.1"),
    (["--cyclical", "2"], "basic+cyclical2"),
    (["--bn-gamma", "0.6"], "basic+bn0.6"),
    (["--pretrain-encoder"], "pretrain+anneal+fb0.5"),
])
@pytest.mark.slow
def test_every_mode_trains_through_the_cli(data_env, tmp_path, flags, mode):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == mode and result["train_seconds"] > 0
    row = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert 0 <= row["kl_weight"] <= 1
    if "--savae" in flags:
        assert "svi_gap" in result and "val_svi_gap" in row
    if "--pretrain-encoder" in flags:              # the autoencoder's steps are part of the cost
        assert (out / "pretrain" / "model.pt").is_file()
        ae = json.loads((out / "pretrain" / "result.json").read_text())
        assert result["steps_joint"] == ae["steps_joint"] + row["steps_joint"] > ae["steps_joint"] > 0


@pytest.mark.parametrize("argv,needle", [
    (["--lm", "--aggressive"], "--lm"),
    (["--savae", "--aggressive"], "--savae"),
    (["--kl-start", "1.5"], "--kl-start"),
    (["--beta", "-1"], "--beta"),
])
def test_incompatible_modes_are_refused(data_env, capsys, argv, needle):
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


@pytest.fixture
def omni_env(omni_root, monkeypatch):
    monkeypatch.setenv("LAGVAE_DATA", str(omni_root))
    return omni_root


@pytest.mark.parametrize("flags", [[], ["--aggressive"], ["--aggressive", "--anneal"], ["--beta", "0.4"],
                                   ["--savae", "--svi-steps", "2"], ["--lm"], ["--free-bits", "0.1"],
                                   ["--cyclical", "2"], ["--bn-gamma", "0.6"], ["--pretrain-encoder"],
                                   ["--encoder-lr-mult", "0.5"]])
@pytest.mark.slow
def test_every_mode_trains_on_images(omni_env, tmp_path, flags):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet",
                        "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n"] == 40 and "ppl" not in result
    assert result["iw_nll"] <= result["elbo"] + 1.0


@pytest.mark.slow
def test_samples_grid_png(omni_env, tmp_path, capsys):
    from PIL import Image
    out = tmp_path / "run"
    lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)])
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--n", "8"]) == 0
    img = Image.open(out / "samples.png")
    assert img.size == (8 * 28 + 9 * 2, 3 * 28 + 4 * 2)      # prior row, then test and reconstruction rows
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--n", "5"]) == 2
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--decode", "beam"]) == 2    # text only
    (tmp_path / "nodata").mkdir()            # the model without its data: the prior row alone, and a note
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--n", "8", "--data-dir",
                        str(tmp_path / "nodata"), "--out", str(tmp_path / "prior.png")]) == 0
    assert Image.open(tmp_path / "prior.png").size == (8 * 28 + 9 * 2, 28 + 2 * 2)
    assert "writing prior samples only" in capsys.readouterr().err


@pytest.mark.slow
def test_snapshots_are_recorded_and_do_not_change_training(data_env, tmp_path):
    base = ["train", "--preset", "tiny", "--nz", "1", "--aggressive", "--quiet", "--grid-stride", "0.5"]
    lagvae.main(base + ["--out", str(tmp_path / "plain")])
    lagvae.main(base + ["--out", str(tmp_path / "snap"), "--snapshot-iters", "0,3"])
    snaps = [json.loads(line) for line in (tmp_path / "snap" / "snapshots.jsonl").read_text().splitlines()]
    assert [s["iter"] for s in snaps] == [0, 3, 16]          # 2 epochs of 8 batches, then the final
    assert all(len(s["model_mean"]) == len(s["inference_mean"]) == 64 for s in snaps)
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("plain", "snap"))
    assert a["iw_nll"] == b["iw_nll"] and a["kl"] == b["kl"]
    assert lagvae.main(["train", "--preset", "tiny", "--snapshot-iters", "5", "--quiet"]) == 2   # nz 2


def test_trajectory_follows_every_update(data_env, tmp_path):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--nz", "1", "--aggressive", "--quiet", "--grid-stride", "0.5",
                        "--trajectory-iters", "2", "--max-inner-steps", "4", "--inner-steps", "4",
                        "--out", str(out)]) == 0
    steps = [p["step"] for p in lagvae.read_jsonl(out / "trajectory.jsonl")]
    assert steps == ["init"] + (["encoder"] * 4 + ["decoder"]) * 2
    assert lagvae.main(["figure", "trajectory", str(out), "--out", str(tmp_path / "t.png")]) == 0


def test_garbage_checkpoint_and_missing_run_dir_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert lagvae.main(["eval", "--ckpt", str(bad)]) == 2
    assert lagvae.main(["figure", "posterior", str(tmp_path / "nope"), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--ckpt" in err[0] and "config.json" in err[1]


SHARED = os.environ.get("LAGVAE_DATA")


@pytest.mark.skipif(not SHARED or not (Path(SHARED or ".") / "ptb" / "ptb.train.txt").is_file(),
                    reason="LAGVAE_DATA with ptb/ is not set (shared data)")
@pytest.mark.parametrize("flags", [[], ["--aggressive", "--anneal"], ["--savae", "--svi-steps", "2"], ["--lm"],
                                   ["--beta", "0.4"], ["--free-bits", "0.1"], ["--cyclical", "2"],
                                   ["--bn-gamma", "0.6"], ["--pretrain-encoder"], ["--encoder-lr-mult", "2"]])
@pytest.mark.slow
def test_every_mode_on_real_text(tmp_path, flags):
    """The modes on Penn Treebank (variable lengths, so length buckets of every size, singletons too)."""
    out = tmp_path / "run"
    assert lagvae.main(["train", "--data", "ptb", "--data-dir", SHARED, "--preset", "tiny", "--epochs", "1",
                        "--max-vocab", "500", "--quiet", "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data"] == "ptb" and math.isfinite(result["iw_nll"])


# ------------------------------------------------------------------------------------------------
# Text samples, latent export, help text, progress lines

@pytest.fixture(scope="module")
def text_run(synth_root, tmp_path_factory):
    """A tiny synthetic run whose weights are then made large and random, so that decodings differ
    from document to document (a tiny trained model decodes every z alike)."""
    out = tmp_path_factory.mktemp("text") / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--data-dir", str(synth_root),
                        "--out", str(out)]) == 0
    ck = torch.load(out / "model.pt", weights_only=False)
    g = torch.Generator().manual_seed(0)
    ck["model"] = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, out / "model.pt")
    return out / "model.pt"


def sample_lines(text, title):
    """The lines of one section of a samples file (after its ## title, up to the next title)."""
    block = text.split("## " + title, 1)[1].split("\n## ", 1)[0]
    return [line for line in block.splitlines()[1:] if line]


def test_text_samples_reconstructions_and_interpolation(text_run, capsys):
    assert lagvae.main(["samples", "--ckpt", str(text_run), "--n", "3", "--interpolate", "2", "0"]) == 0
    printed = capsys.readouterr().out
    text = (text_run.parent / "samples.txt").read_text()
    assert printed.startswith(text) and printed.rstrip().endswith("samples.txt")
    assert len(sample_lines(text, "from the prior")) == 3
    recon = sample_lines(text, "test documents")
    assert [line.split()[0] for line in recon] == ["original", "mean", "sample"] * 3
    means = [line[len("mean"):].strip() for line in recon if line.startswith("mean")]
    assert len(set(means)) == 3                   # the decodings depend on the document
    path = sample_lines(text, "between the posterior means of test documents 2 and 0")
    assert len(path) == 7 and path[0].startswith("0.00") and path[-1].startswith("1.00")
    assert path[0][4:].strip() == means[2] and path[-1][4:].strip() == means[0]


def test_text_samples_reconstruct_sentences_of_ones_own(text_run, tmp_path, capsys):
    """samples --reconstruct FILE: the file's sentences, tokenized as the training data, are the
    documents reconstructed (not the test split's), in order; stderr counts them and their tokens."""
    mine = tmp_path / "mine.txt"
    words = lagvae.load_checkpoint(text_run)[2].vocab[4:7]          # past <pad> <s> </s> <unk>
    mine.write_text(f"{words[0]} {words[1]}\n{words[2]} zzzunseen\n")
    assert lagvae.main(["samples", "--ckpt", str(text_run), "--n", "2", "--reconstruct", str(mine),
                        "--out", str(tmp_path / "s.txt")]) == 0
    err = capsys.readouterr().err
    assert f"--reconstruct {mine}: 2 sentences, 4 tokens, 1 outside the vocabulary" in err
    recon = sample_lines((tmp_path / "s.txt").read_text(), "your sentences")
    assert [line.split()[0] for line in recon] == ["original", "mean", "sample"] * 2
    assert recon[0].split()[1:] == [words[0], words[1]] and recon[3].split()[1:] == [words[2], "<unk>"]


@pytest.mark.parametrize("flags", [["--decode", "beam", "--beam-size", "3"],
                                   ["--decode", "sample", "--temperature", "0.5"]])
def test_text_samples_decoding_options(text_run, tmp_path, capsys, flags):
    out = tmp_path / "s.txt"
    assert lagvae.main(["samples", "--ckpt", str(text_run), "--n", "2", "--max-len", "4", "--out", str(out),
                        *flags]) == 0
    text = out.read_text()
    assert f"{flags[1]} (" in text.splitlines()[0] and "at most 4 tokens" in text
    for line in sample_lines(text, "from the prior"):
        assert len(line.replace(" ...", "").split()) <= 4       # at most 3 words and </s>, or 4 words cut


@pytest.mark.parametrize("argv,needle", [(["samples", "--beam-size", "0"], "--beam-size"),
                                         (["samples", "--temperature", "-1"], "--temperature"),
                                         (["samples", "--interpolate", "0"], "--interpolate"),
                                         (["encode", "--split", "dev"], "--split")])
def test_bad_decoding_and_export_flags_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        lagvae.main([argv[0], "--ckpt", "m.pt", *argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0]


def test_interpolating_a_missing_document_is_a_one_line_error(text_run, capsys):
    assert lagvae.main(["samples", "--ckpt", str(text_run), "--interpolate", "0", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--interpolate" in err[0]


def test_encode_exports_latents(text_run, tmp_path, capsys):
    out = tmp_path / "latents"                      # no .npz suffix: the file is written where asked
    assert lagvae.main(["encode", "--ckpt", str(text_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    z = np.load(out)
    model, cfg, corpus = lagvae.load_checkpoint(text_run)
    model.eval()
    assert set(z.files) == {"mu", "logvar", "line"} and z["mu"].shape == z["logvar"].shape == (64, cfg.nz)
    assert z["line"].tolist() == list(range(1, 65))         # the synthetic files have no blank line
    with torch.no_grad():
        for i in (0, 17, 63):
            mu, logvar = model.encode(corpus.splits["test"][i][None])
            assert np.allclose(z["mu"][i], mu[0].numpy(), atol=1e-5)
            assert np.allclose(z["logvar"][i], logvar[0].numpy(), atol=1e-5)


def test_encode_keeps_yelp_labels(tmp_path):
    g = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        (tmp_path / "yelp").mkdir(exist_ok=True)
        lines = [f"{g.integers(5)}\t" + " ".join(f"w{g.integers(30)}" for _ in range(g.integers(2, 9))) for _ in range(30)]
        (tmp_path / "yelp" / f"yelp.{split}.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert lagvae.main(["train", "--data", "yelp", "--data-dir", str(tmp_path), "--preset", "tiny", "--epochs", "1",
                        "--quiet", "--out", str(run)]) == 0
    assert lagvae.main(["encode", "--ckpt", str(run / "model.pt"), "--split", "valid"]) == 0
    z = np.load(run / "latents.valid.npz")
    labels = [int(line.split("\t")[0]) for line in (tmp_path / "yelp" / "yelp.valid.txt").read_text().splitlines()]
    assert z["labels"].tolist() == labels and z["mu"].shape == (30, 2)
    model, _, corpus = lagvae.load_checkpoint(run / "model.pt")     # rows follow the file, not the length buckets
    model.eval()
    with torch.no_grad():
        mu = torch.cat([model.encode(doc[None])[0] for doc in corpus.splits["valid"]])
    assert np.allclose(z["mu"], mu.numpy(), atol=1e-5)


def test_encode_images(omni_env, tmp_path):
    out = tmp_path / "run"
    lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)])
    assert lagvae.main(["encode", "--ckpt", str(out / "model.pt")]) == 0
    z = np.load(out / "latents.test.npz")
    assert z["mu"].shape == z["logvar"].shape == (40, 4) and "labels" not in z.files


def test_help_explains_every_train_flag(capsys):
    """Every Config field has a help text, and --help shows it with the default and the presets."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(lagvae.Config)}
    fields = [f.name for f in dataclasses.fields(lagvae.Config)]
    assert [f for f in fields if not helps.get(f)] == []
    with pytest.raises(SystemExit):
        lagvae.main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())          # argparse wraps lines
    for f in dataclasses.fields(lagvae.Config):
        flag = "--" + f.name.replace("_", "-")
        usage = f"{flag},--no-{flag[2:]}" if f.type is bool else flag + f.name.upper()
        assert usage + "".join(helps[f.name].split()) in shown, f.name
    assert "[default32;presets:synthetic2,tiny2,imagetiny4]" in shown
    with pytest.raises(SystemExit):
        lagvae.main(["--help"])
    assert "(ICLR 2019)." in capsys.readouterr().out


@pytest.mark.parametrize("quiet,terminal", [(False, False), (True, False), (False, True)])
def test_progress_lines_in_a_log_as_on_a_terminal(data_env, tmp_path, monkeypatch, capsys, quiet, terminal):
    """One kind of progress, plain lines, wherever stdout goes (a nohup log, CI, a terminal)."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--progress-every", "1e-9",
                        "--out", str(tmp_path / "run"), *(["--quiet"] if quiet else [])]) == 0
    out = capsys.readouterr().err.splitlines()                # stdout is the command's output (eval's JSON)
    lines = [line for line in out if "ETA" in line and line.startswith("epoch")]
    evals = [line for line in out if "ETA" in line and not line.startswith("epoch")]
    if quiet:
        assert lines == evals == []
    else:
        assert len(lines) == 8                                  # one per batch at this interval
        assert lines[-1].startswith("epoch   1 | batch 8/8 | inner steps 0 | train -elbo ")
        assert re.search(r", run ≤ 0m\d\ds$", lines[-1])       # the run's ETA too: this was its last epoch
        assert any(line.startswith("test | batch ") for line in evals)    # and the test evaluation's progress
        assert any(line.startswith("valid | batch ") for line in evals)


def test_no_run_eta_while_aggressive(data_env, tmp_path, capsys):
    """An aggressive epoch costs several plain ones: the run's bound from its pace would be hours off."""
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "4", "--progress-every", "1e-9", "--aggressive",
                        "--mi-patience", "1", "--iw-samples", "2", "--out", str(tmp_path / "run")]) == 0
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {r["aggressive"] for r in rows} == {True, False}        # both kinds of epoch
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch") and "ETA" in line]
    for row in rows:
        mine = [line for line in lines if line.startswith(f"epoch {row['epoch']:3d} | batch")]
        assert mine and all((", run ≤ " in line) != row["aggressive"] for line in mine)


@pytest.mark.slow
def test_bench_times_an_image_model(omni_env, capsys):
    assert lagvae.main(["bench", "--data", "omniglot", "--preset", "tiny", "--steps", "1", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["data"] == "omniglot" and [r["kind"] for r in result["rows"]] == list(lagvae.BENCH_KINDS)


# Issue 12: every bad number, checkpoint and output path is one line and exit 2

def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lagvae: error: "), err
    return err[0]


def test_every_numeric_field_has_a_rule():
    numeric = {f.name for f in dataclasses.fields(lagvae.Config) if f.type in (int, float)}
    ruled = {f.name for f in dataclasses.fields(lagvae.Config) if f.metadata["rule"]}
    assert ruled == numeric | {"device", "dec_kernels", "optim", "decay_at", "rule", "snapshot_iters"}


def help_group(text, flag):
    """The title of the --help group that lists flag."""
    above = text[:text.index(f"\n  {flag} ")]
    return above[above.rindex("\n\n") + 2:].splitlines()[0].rstrip(":")


def test_every_field_declares_its_help_range_and_resumability_beside_itself(capsys):
    for f in dataclasses.fields(lagvae.Config):
        assert set(f.metadata) == {"help", "rule", "resume", "group"} and f.metadata["help"], f.name
        assert f.metadata["rule"] is None or callable(f.metadata["rule"]), f.name
        assert f.metadata["resume"] in (True, False) or callable(f.metadata["resume"]), f.name
    with pytest.raises(SystemExit):
        lagvae.main(["train", "--help"])
    text = capsys.readouterr().out
    assert help_group(text, "--nz") == "model (App. B)" and help_group(text, "--seed") == "run"
    assert help_group(text, "--grid-stride").startswith("posterior")


def test_resume_of_a_cyclical_run_refuses_another_epoch_budget(data_env, tmp_path, capsys):
    """The cycles are fractions of epochs x batches: another --epochs would reshape the KL schedule."""
    out = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--quiet", "--iw-samples", "0", "--out", str(out)]
    assert lagvae.main(base + ["--cyclical", "2", "--epochs", "2"]) == 0
    assert lagvae.main(base + ["--cyclical", "2", "--epochs", "4", "--resume"]) == 2
    err = one_error_line(capsys)
    assert "--epochs 2 -> 4" in err and "--cyclical" in err
    assert lagvae.main(base + ["--cyclical", "2", "--epochs", "2", "--resume", "--progress-every", "5"]) == 0


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "0"], "--lr: expected a finite number in (0, 1e+06], got 0.0"),
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "1e300"], "--lr"),
    (["--clip-grad", "-1"], "--clip-grad: expected a finite number > 0"), (["--clip-grad", "0"], "--clip-grad"),
    (["--clip-grad", "nan"], "--clip-grad"),
    (["--lr-decay", "0"], "--lr-decay: expected a finite number in (0, 1]"), (["--lr-decay", "1.5"], "--lr-decay"),
    (["--lr-decay", "nan"], "--lr-decay"),
    (["--free-bits", "nan"], "--free-bits: expected a finite number >= 0, got nan"), (["--free-bits", "-1"], "--free-bits"),
    (["--free-bits", "inf"], "--free-bits"), (["--free-bits", "1e300"], "at most 3.40282e+38"),
    (["--beta", "nan"], "--beta"), (["--beta", "inf"], "--beta"), (["--beta", "-0.5"], "--beta"),
    (["--grid-stride", "0"], "--grid-stride: expected a finite number in [0.001, 40]"),
    (["--grid-stride", "nan"], "--grid-stride"), (["--grid-stride", "1e-12"], "--grid-stride"),
    (["--grid-stride", "100"], "--grid-stride"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 4294967295], got -1"), (["--seed", str(2 ** 32)], "--seed"),
    (["--max-decay", "0"], "--max-decay: expected an integer >= 1, got 0"), (["--max-decay", "-3"], "--max-decay"),
    (["--nz", "1", "--snapshot-iters", "0,-200"], "--snapshot-iters"), (["--nz", "1", "--snapshot-iters", "0,x"], "--snapshot-iters"),
    (["--decay-at", "3,2"], "--decay-at: expected increasing epochs >= 1 like 9,23,35"), (["--decay-at", "0"], "--decay-at"),
    (["--decay-at", "2,,5"], "--decay-at"), (["--decay-at", "Never"], "--decay-at"), (["--decay-at", "2,2"], "--decay-at"),
    (["--nz", "1", "--snapshot-iters", "0, "], "--snapshot-iters"), (["--nz", "1", "--trajectory-iters", "-1"], "--trajectory-iters"),
    (["--ni", str(10 ** 9)], "--ni: expected an integer in [1, 16384]"), (["--enc-nh", "16385"], "--enc-nh"),
    (["--dec-nh", "0"], "--dec-nh"), (["--nz", str(10 ** 7)], "--nz"),
    (["--iw-samples", "-1"], "--iw-samples"), (["--iw-samples", str(10 ** 12)], "--iw-samples: expected an integer in [0, 1000000]"),
    (["--iw-chunk", "0"], "--iw-chunk"), (["--epochs", str(2 ** 70)], "at most 9223372036854775807"),
    (["--cyclical", str(10 ** 400)], "--cyclical"), (["--batch-size", "-8"], "--batch-size"),
    (["--max-len", "-1"], "--max-len"), (["--subset", "-1"], "--subset"), (["--warm-up", "0"], "--warm-up"),
    (["--kl-start", "nan"], "--kl-start"), (["--kl-start", "-0.1"], "--kl-start"),
    (["--encoder-lr-mult", "inf"], "--encoder-lr-mult"), (["--encoder-lr-mult", "0"], "--encoder-lr-mult"),
    (["--dropout-in", "nan"], "--dropout-in"), (["--dropout-out", "1"], "--dropout-out"),
    (["--svi-lr", "0"], "--svi-lr"), (["--svi-lr", "1e39"], "--svi-lr"), (["--bn-gamma", "nan"], "--bn-gamma"),
    (["--dec-kernels", "57"], "--dec-kernels: expected odd kernel sizes up to 55"), (["--dec-kernels", "4"], "--dec-kernels"),
    (["--lm", "--anneal"], "--lm: the language-model baseline has no latent; drop --anneal"),
    (["--lm", "--cyclical", "2"], "drop --cyclical"), (["--lm", "--beta", "0.5"], "drop --beta"),
    (["--lm", "--encoder-lr-mult", "2"], "drop --encoder-lr-mult"),
    (["--anneal", "--cyclical", "2"], "--anneal and --cyclical"),
    (["--inner-steps", "3"], "--inner-steps: a fixed inner-loop budget needs --aggressive"),
    (["--warm-up-iters", "30"], "--warm-up-iters: a warm-up length needs --anneal"),
    (["--max-vocab", "3"], "every training token would be <unk>"),
])
def test_bad_numbers_are_refused(data_env, tmp_path, capsys, flags, needle):
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(tmp_path / "run"), *flags]) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("flags", [["--iw-chunk", str(10 ** 12)], ["--subset", "1"], ["--max-test", "1"],
                                   ["--lr-decay", "1"], ["--max-vocab", "5"], ["--seed", str(2 ** 32 - 1)]])
def test_edge_values_that_are_accepted_train_cleanly(data_env, tmp_path, capsys, flags):
    """Bounds are inclusive where the value still means something; a chunk larger than the sample
    count is capped by the memory budget, and a one-example split has no AU variance (0, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r"),
                            *flags]) == 0
    assert capsys.readouterr().err == ""
    assert math.isfinite(json.loads((tmp_path / "r" / "result.json").read_text())["iw_nll"])


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """One tiny synthetic run (its config names the data root, so no environment is needed)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--data-dir", str(synth_root),
                        "--out", str(out)]) == 0
    return out


def without(key):
    return lambda ck: {k: v for k, v in ck.items() if k != key}


def with_config(**fields):
    return lambda ck: {**ck, "config": {**ck["config"], **fields}}


def with_weight(name, value):
    return lambda ck: {**ck, "model": {**ck["model"], name: value}}


@pytest.mark.parametrize("edit,needle", [
    (without("vocab_size"), "not a lagvae model checkpoint (no vocab_size)"),
    (without("model"), "(no model)"),
    (without("config"), "(no config)"),
    (lambda ck: torch.zeros(3), "(no config, model, vocab_size, epoch, vocab, specials, fingerprints)"),
    (lambda ck: {**ck, "config": [1, 2]}, "its config is a list"),
    (with_config(nz=3), "its weights do not fit its config"),
    (with_config(enc_nh=17), "its weights do not fit its config"),
    (with_config(no_such_field=1), "its saved config is invalid (unknown config field 'no_such_field')"),
    (with_config(nz="2"), "(--nz: expected an integer, got '2')"),
    (with_config(lr=float("nan")), "(--lr: expected a finite number"),
    (with_config(lm=True), "--lm: the language-model baseline has no latent"),
    (with_weight("decoder.pred.weight", torch.full((3, 3), float("nan"))), "weights hold NaN or infinite values (decoder.pred.weight)"),
    (with_weight("decoder.pred.weight", "not a tensor"), "not a state dict of named tensors"),
    (lambda ck: {**ck, "vocab_size": 7}, "trained with vocabulary 7"),
    (lambda ck: {**ck, "model": {k: v * float("inf") if v.is_floating_point() else v for k, v in ck["model"].items()}},
     "weights hold NaN or infinite values (encoder.embed.weight, encoder.lstm.weight_ih_l0, encoder.lstm.weight_hh_l0, ...)"),
])
def test_bad_checkpoints_are_one_line_errors(trained, tmp_path, capsys, edit, needle):
    ck = torch.load(trained / "model.pt", weights_only=False)
    bad = tmp_path / "model.pt"
    torch.save(edit(ck), bad)
    assert lagvae.main(["eval", "--ckpt", str(bad), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"lagvae: error: --ckpt {bad}: ") and needle in line


def test_training_state_is_not_a_model_checkpoint(trained, capsys):
    assert lagvae.main(["eval", "--ckpt", str(trained / "last.pt")]) == 2
    assert "not a lagvae model checkpoint (it holds training state: a last.pt?)" in one_error_line(capsys)


def test_eval_flags_are_checked_as_eval_flags(trained, capsys):
    assert lagvae.main(["eval", "--ckpt", str(trained / "model.pt"), "--iw-samples", "-5"]) == 2
    assert one_error_line(capsys) == "lagvae: error: --iw-samples: expected an integer in [0, 1000000], got -5"


def test_eval_never_prints_a_nan(trained, tmp_path, monkeypatch, capsys):
    """A model whose weights are finite but whose numbers overflow is refused, not reported as NaN."""
    ck = torch.load(trained / "model.pt", weights_only=False)
    ck["model"]["decoder.pred.weight"] = torch.full_like(ck["model"]["decoder.pred.weight"], 3e38)
    torch.save(ck, tmp_path / "model.pt")
    assert lagvae.main(["eval", "--ckpt", str(tmp_path / "model.pt"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "evaluation gave" in line and "nan" in line and "the model is numerically broken" in line
    assert capsys.readouterr().out == ""


def test_multi_line_messages_become_one_line(trained, synth_root, tmp_path, capsys):
    """Resuming with other sizes fails inside torch with a multi-line message; the CLI prints one."""
    run = shutil.copytree(trained, tmp_path / "run")
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "2", "--quiet", "--data-dir", str(synth_root),
                        "--out", str(run), "--resume", "--enc-nh", "9"]) == 2
    assert "--resume" in one_error_line(capsys)


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    def allocate(cfg, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 4016000000000 bytes.\nError code 12")
    monkeypatch.setattr(lagvae, "train", allocate)
    assert lagvae.main(["train", "--preset", "tiny"]) == 2
    line = one_error_line(capsys)
    assert "out of memory" in line and "4016000000000 bytes" in line and "--batch-size" in line
    monkeypatch.setattr(lagvae, "train", lambda cfg, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):          # a bug keeps its traceback
        lagvae.main(["train", "--preset", "tiny"])


@pytest.mark.parametrize("out,needle", [(".", "is a folder"), ("nofolder/grid.png", "there is no folder"),
                                        ("grid.gif", "expected a file name ending in .png")])
def test_samples_out_is_checked_before_sampling(omni_env, tmp_path, capsys, out, needle):
    run = tmp_path / "run"
    lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(run)])
    assert lagvae.main(["samples", "--ckpt", str(run / "model.pt"), "--out", str(tmp_path / out), "--n", "8"]) == 2
    assert needle in one_error_line(capsys)
    assert lagvae.main(["samples", "--ckpt", str(run / "model.pt"), "--n", "2048"]) == 2
    assert "--n: expected at most 1024" in one_error_line(capsys)


@pytest.mark.parametrize("out,needle", [(".", "is a folder"), ("nofolder/f.png", "there is no folder"),
                                        ("f.docx", "expected a file name ending in")])
def test_figure_out_is_checked(trained, tmp_path, capsys, out, needle):
    assert lagvae.main(["figure", "dynamics", str(trained), "--out", str(tmp_path / out)]) == 2
    assert needle in one_error_line(capsys)
    assert lagvae.main(["figure", "dynamics", str(trained), "--out", str(tmp_path / "f.pdf")]) == 0


# Fuzz: flags with bad and good values. Values that make a run long (epochs, subset, IW samples, inner
# and SVI steps) are pinned after the fuzzed ones, so the runs that pass validation take a second.
PINNED = ["--epochs", "1", "--subset", "16", "--iw-samples", "4", "--max-inner-steps", "5", "--svi-steps", "2",
          "--preset", "tiny", "--device", "cpu", "--quiet"]
PINNED_FIELDS = {"epochs", "subset", "iw_samples", "max_inner_steps", "svi_steps", "preset", "device", "quiet",
                 "out", "data_dir", "resume", "threads"}     # threads would change the test process's count
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "3.5e38", "1e-320", str(2 ** 63), "-0.0", "x", ""]
TEXT_VALUES = {"data": ["synthetic", "omniglot", "nosuch", "text:/nonexistent/x"],
               "dec_kernels": ["3", "5,3", "4", "", "x", "99", "3,-1"],
               "snapshot_iters": ["", "0", "0,3", "-1", "a", "0,,2"], "optim": ["sgd", "adam", "rmsprop"],
               "rule": ["paper", "adaptive", "fast"], "decay_at": ["", "never", "1,2", "2,1", "0", "/nonexistent/run"]}


def flag_values(f):
    flag = "--" + f.name.replace("_", "-")
    if f.type is bool:
        return st.sampled_from([[flag], ["--no-" + flag[2:]]])
    if f.type is str:
        return st.sampled_from(TEXT_VALUES[f.name]).map(lambda v: [flag, v])
    small = (st.integers(1, 3).map(str) if f.type is int else
             st.floats(0.0, 1.0).map(lambda v: f"{v:.3g}"))       # grid strides >= 0.001 stay cheap too
    if f.name == "grid_stride":
        small = st.sampled_from(["0.5", "1", "40"])
    return st.one_of(st.sampled_from(BAD_NUMBERS), small).map(lambda v: [flag, v])


FUZZ_FIELDS = [f for f in dataclasses.fields(lagvae.Config) if f.name not in PINNED_FIELDS]


@settings(derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(FUZZ_FIELDS), min_size=1, max_size=4, unique_by=lambda f: f.name)
       .flatmap(lambda fs: st.tuples(*map(flag_values, fs))))
@pytest.mark.slow
def test_fuzzed_flags_never_escape_as_exceptions(synth_root, tmp_path, capsys, pairs):
    argv = ["train", *(a for pair in pairs for a in pair), *PINNED, "--data-dir", str(synth_root),
            "--out", tempfile.mkdtemp(dir=tmp_path) + "/run"]
    try:
        rc = lagvae.main(argv)
    except SystemExit as e:         # argparse: a value of the wrong type
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc in (0, 2), argv
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("lagvae: error: "), (argv, err)


def test_eval_update_rewrites_only_what_the_new_evaluation_changes(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = json.loads((run / "result.json").read_text())
    assert lagvae.main(["eval", "--ckpt", str(run / "model.pt"), "--mi-samples", "7", "--update", "--quiet"]) == 0
    after = json.loads((run / "result.json").read_text())
    assert after["mi_samples"] == 7 and after["train_seconds"] == before["train_seconds"]
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed <= {"mi", "mi_full", "mi_samples", "test_data"} and "mi_samples" in changed
    assert after["test_data"] == "as trained"                  # the run's own test set
    err = capsys.readouterr().err
    assert all(f"result.json: {k} " in err for k in changed)
    (run / "result.json").unlink()                    # not a finished run: refused, nothing written
    assert lagvae.main(["eval", "--ckpt", str(run / "model.pt"), "--update", "--quiet"]) == 2
    assert "no readable result.json of a finished run" in one_error_line(capsys)
    assert not (run / "result.json").exists()


def test_train_forks_a_saved_config_with_flags_over_it(data_env, tmp_path):
    first = tmp_path / "first"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--nz", "3", "--lr", "0.5", "--quiet",
                        "--iw-samples", "5", "--out", str(first)]) == 0
    fork = tmp_path / "fork"
    assert lagvae.main(["train", "--config", str(first / "config.json"), "--seed", "7", "--quiet",
                        "--out", str(fork)]) == 0
    a, b = (json.loads((d / "config.json").read_text())["config"] for d in (first, fork))
    assert {k for k in a if a[k] != b[k]} == {"seed", "out"} and b["seed"] == 7 and b["nz"] == 3


@pytest.mark.parametrize("device,needle", [("cuda:x", "expected auto, cpu, cuda or cuda:N"),
                                           ("gpu", "expected auto, cpu, cuda or cuda:N")])
def test_device_strings(device, needle):
    with pytest.raises(lagvae.UsageError, match=needle):
        lagvae.resolve_config({"device": device})
    if not torch.cuda.is_available():
        with pytest.raises(lagvae.UsageError, match="no CUDA device is available"):
            lagvae.resolve_config({"device": "cuda:1"})


def test_every_preset_names_its_thread_count():
    """One thread for the small models (they step several times faster on a loaded machine), every core
    for the paper's; none is left to torch's default by omission."""
    for kind, presets in lagvae.PRESETS.items():
        for name, values in presets.items():
            assert "threads" in values, f"{kind} {name}"
            assert values["threads"] == (0 if name == "paper" else 1), f"{kind} {name}"


@pytest.mark.parametrize("argv", [["eval", "--quiet"], ["samples", "--n", "2"], ["encode"]])
def test_commands_on_a_saved_model_take_threads_the_runs_by_default(trained, tmp_path, monkeypatch, capsys, argv):
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)      # the test process keeps its own count
    out = [] if argv[0] == "eval" else ["--out", str(tmp_path / ("s.txt" if argv[0] == "samples" else "l.npz"))]
    assert lagvae.main([*argv, "--ckpt", str(trained / "model.pt"), *out]) == 0
    assert lagvae.main([*argv, "--ckpt", str(trained / "model.pt"), *out, "--threads", "3"]) == 0
    assert counts == [1, 3]          # the tiny preset's one thread, then the flag's
    assert lagvae.main([*argv, "--ckpt", str(trained / "model.pt"), *out, "--threads", "-1"]) == 2
    assert "--threads: expected an integer in [0, 1024]" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["eval", "--ckpt", "m.pt", "--data", "x"], ["train", "--aggr", "--nz", "0"],
                                  ["table", "r", "--form", "csv"], ["samples", "--ckpt", "m.pt", "--temp", "2"]])
def test_a_prefix_of_a_flag_is_refused_not_taken_for_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        lagvae.main(argv)
    prefix = next(a for a in argv[1:] if a.startswith("--") and a != "--ckpt")
    assert e.value.code == 2 and f"unrecognized arguments: {prefix}" in capsys.readouterr().err


def test_data_py_takes_no_prefix_of_a_flag(capsys):
    import data as datalib
    with pytest.raises(SystemExit):
        datalib.main(["--data", "x", "info"])


def test_default_run_names_carry_the_preset_and_latent_size_where_not_the_default():
    name = lambda **o: str(lagvae.run_dir(lagvae.resolve_config(o)))
    assert name(aggressive=True) == "runs/synthetic-aggressive-s0"
    assert name(aggressive=True, nz=1) == "runs/synthetic-nz1-aggressive-s0"
    assert name(data="ptb", preset="tiny", seed=2) == "runs/ptb-tiny-basic-s2"
    assert name(data="ptb", lm=True) == "runs/ptb-lm-s0"
    assert name(data="text:some/where/corpus", anneal=True) == "runs/text:corpus-basic+anneal-s0"


@pytest.mark.parametrize("over,mode", [
    ({}, "basic"), ({"lm": True}, "lm"), ({"savae": True}, "savae"), ({"savae": True, "anneal": True}, "savae+anneal"),
    ({"aggressive": True, "rule": "adaptive"}, "aggressive-adaptive"), ({"aggressive": True, "inner_steps": 10},
    "aggressive-inner10"), ({"aggressive": True, "inner_steps": 10, "rule": "adaptive"}, "aggressive-inner10-adaptive"),
    ({"rule": "adaptive"}, "basic"), ({"anneal": True, "warm_up_iters": 390}, "basic+anneal390"),
    ({"free_bits": 0.125}, "basic+fb0.125"), ({"cyclical": 4}, "basic+cyclical4"), ({"bn_gamma": 0.6}, "basic+bn0.6"),
    ({"encoder_lr_mult": 2}, "basic+enclr2"), ({"decay_at": "3,5"}, "basic+decayat"), ({"beta": 0.2}, "basic+beta0.2"),
    ({"pretrain_encoder": True}, "pretrain+anneal+fb0.5"),
    ({"pretrain_encoder": True, "aggressive": True}, "aggressive+pretrain+anneal+fb0.5"),
    ({"pretrain_encoder": True, "savae": True}, "savae+pretrain+anneal+fb0.5"),
])
def test_the_mode_name_says_every_mode_that_trains(over, mode):
    """Pretraining precedes a remedy, it does not replace it: with --aggressive or --savae the name, and so
    the default run directory and the table row, are not plain pretraining's."""
    cfg = lagvae.resolve_config({"data": "ptb", **over})
    assert lagvae.mode_name(cfg) == mode
    assert lagvae.run_dir(cfg) == Path(f"runs/ptb-{mode}-s0")


@pytest.mark.parametrize("path", sorted(ROOT.glob("runs/*/config.json")), ids=lambda p: p.parent.name)
def test_every_saved_run_keeps_its_mode_name(path):
    """The mode name keys tables, figures and run directories: the committed runs keep theirs."""
    saved = json.loads(path.read_text())
    mode = lagvae.mode_name(lagvae.resolve_config(lagvae.forked_config(path)))
    result = path.with_name("result.json")
    assert mode == saved["mode"] == (json.loads(result.read_text())["mode"] if result.is_file() else mode)


def test_the_pretraining_autoencoder_saves_a_config_that_resolves(data_env, tmp_path, capsys):
    """The autoencoder drops the KL schedule with everything that needs it (--warm-up-iters needs
    --anneal), so its saved config is valid and its model.pt evaluates like any other."""
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--iw-samples", "2",
                        "--pretrain-encoder", "--warm-up-iters", "30", "--out", str(out)]) == 0
    assert lagvae.main(["eval", "--ckpt", str(out / "pretrain" / "model.pt"), "--iw-samples", "2", "--quiet"]) == 0
    saved = json.loads((out / "pretrain" / "config.json").read_text())
    assert lagvae.mode_name(lagvae.resolve_config(lagvae.forked_config(out / "pretrain" / "config.json"))) == \
        saved["mode"] == "basic+beta0"


def test_resume_takes_the_runs_config_with_resumable_flags_over_it(data_env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--aggressive", "--quiet", "--out", str(out)]) == 0
    assert lagvae.main(["train", "--out", str(out), "--resume", "--nz", "3"]) == 2
    one_line_error(capsys, "--resume", "--nz 2 -> 3")
    assert lagvae.main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["preset"], config["aggressive"], config["epochs"]) == ("tiny", True, 2)
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_resume_of_a_finished_run_says_so_and_does_nothing(data_env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    before = {f: (out / f).read_bytes() for f in ("result.json", "config.json", "log.jsonl")}
    monkeypatch.setattr(lagvae, "evaluate", None)          # no test evaluation runs again
    capsys.readouterr()
    assert lagvae.main(["train", "--out", str(out), "--resume"]) == 0
    assert "finished after epoch 1, its result.json stands; nothing to resume" in capsys.readouterr().out
    assert before == {f: (out / f).read_bytes() for f in before}


def test_help_names_no_internals(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            lagvae.main(argv)
        out = capsys.readouterr().out
        assert not any(internal in out for internal in ("{train,eval", "see data.py", "(RULES)")), out
    with pytest.raises(SystemExit):
        lagvae.main(["nosuch"])
    assert "argument COMMAND: invalid choice" in capsys.readouterr().err


def test_a_missing_checkpoint_is_named_as_missing(tmp_path, capsys):
    assert lagvae.main(["eval", "--ckpt", str(tmp_path / "model.pt")]) == 2
    assert "no such file" in one_line_error(capsys, "--ckpt")
    assert lagvae.main(["eval", "--ckpt", str(tmp_path)]) == 2
    assert "a run directory? its model.pt" in one_line_error(capsys, "--ckpt")


def test_one_sentence_is_one_sentence(trained, tmp_path, capsys):
    (tmp_path / "one.txt").write_text("1 2 3\n")
    assert lagvae.main(["encode", "--ckpt", str(trained / "model.pt"), "--input", str(tmp_path / "one.txt"),
                        "--out", str(tmp_path / "z.npz")]) == 0
    assert ": 1 sentence, 3 tokens," in capsys.readouterr().err


def test_a_language_model_builds_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lagvae.TextVAE(12, lagvae.resolve_config({"preset": "tiny", "lm": True}))
        lagvae.ImageVAE(lagvae.resolve_config({"data": "omniglot", "preset": "tiny", "lm": True}))


def test_an_interrupt_on_a_terminal_starts_its_own_line(monkeypatch, capsys):
    import signal

    def interrupted(*args, **kwargs):
        raise lagvae.Interrupted(signal.SIGINT, "epoch 1 batch 3")
    monkeypatch.setattr(lagvae, "train", interrupted)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert lagvae.main(["train", "--preset", "tiny"]) == 130
    assert capsys.readouterr().err.startswith("\nlagvae: error: interrupted by SIGINT")
