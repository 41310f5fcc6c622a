"""Section 7: the command line, run directories, resume and error messages."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lagvae

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.json", "log.jsonl", "model.pt", "result.json"}
LOG_KEYS = {"epoch", "train_elbo", "train_rec", "train_kl", "val_elbo", "val_rec", "val_kl", "val_mi",
            "val_mi_full", "val_au", "lr", "aggressive", "inner_steps", "seconds"}
RESULT_KEYS = {"iw_nll", "elbo", "rec", "kl", "mi", "mi_full", "au", "ppl", "train_seconds", "mode"}


@pytest.mark.parametrize("flags,mode", [([], "basic"), (["--aggressive"], "aggressive"),
                                        (["--aggressive", "--inner-steps", "3"], "aggressive-inner3")])
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
def test_bad_input_gives_one_line_and_exit_2(data_env, tmp_path, argv, needle):
    proc = subprocess.run([sys.executable, str(ROOT / "lagvae.py"), *argv, "--quiet"] if argv[0] == "train"
                          else [sys.executable, str(ROOT / "lagvae.py"), *argv],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


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
    one_line_error(capsys, str(out), "--overwrite", "--resume")
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


def test_a_second_writer_is_refused(data_env, tmp_path, capsys):
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:                  # as another live process would hold it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--out", str(out)]) == 2
        one_line_error(capsys, "another lagvae process")
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)]) == 0


def test_kill_mid_epoch_then_resume_is_exact(data_env, tmp_path):
    """SIGKILL a subprocess inside an aggressive epoch, after a timed checkpoint; the resumed run ends
    with the same log, result and weights as one that was never interrupted."""
    import signal
    import time
    base = [sys.executable, str(ROOT / "lagvae.py"), "train", "--preset", "tiny", "--subset", "2000", "--epochs", "2",
            "--aggressive", "--iw-samples", "5", "--quiet", "--checkpoint-minutes", "0.002"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(base + ["--out", str(straight)], check=True, env=env, timeout=600)
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
def test_every_mode_trains_through_the_cli(data_env, tmp_path, flags, mode):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == mode and result["train_seconds"] > 0
    row = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert 0 <= row["kl_weight"] <= 1
    if "--savae" in flags:
        assert "svi_gap" in result and "val_svi_gap" in row
    if "--pretrain-encoder" in flags:
        assert (out / "pretrain" / "model.pt").is_file()


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
def test_every_mode_trains_on_images(omni_env, tmp_path, flags):
    out = tmp_path / "run"
    assert lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet",
                        "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n"] == 40 and "ppl" not in result
    assert result["iw_nll"] <= result["elbo"] + 1.0


def test_samples_grid_png(omni_env, tmp_path):
    from PIL import Image
    out = tmp_path / "run"
    lagvae.main(["train", "--data", "omniglot", "--preset", "tiny", "--epochs", "1", "--quiet", "--out", str(out)])
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--n", "8"]) == 0
    img = Image.open(out / "samples.png")
    assert img.size == (8 * 28 + 9 * 2, 3 * 28 + 4 * 2)      # prior row, then test and reconstruction rows
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--n", "5"]) == 2
    assert lagvae.main(["samples", "--ckpt", str(out / "model.pt"), "--decode", "beam"]) == 2    # text only


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
    assert set(z.files) == {"mu", "logvar"} and z["mu"].shape == z["logvar"].shape == (64, cfg.nz)
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
    """Every Config field has a help comment, and --help shows it with the default and the presets."""
    helps, _ = lagvae.config_help()
    fields = [f.name for f in dataclasses.fields(lagvae.Config)]
    assert [f for f in fields if not helps.get(f)] == []
    with pytest.raises(SystemExit):
        lagvae.main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())          # argparse wraps lines
    for f in dataclasses.fields(lagvae.Config):
        flag = "--" + f.name.replace("_", "-")
        usage = f"{flag},--no-{flag[2:]}" if f.type in (bool, "bool") else flag + f.name.upper()
        assert usage + "".join(helps[f.name].split()) in shown, f.name
    assert "[default32;presets:synthetic2,tiny2,imagetiny4]" in shown
    with pytest.raises(SystemExit):
        lagvae.main(["--help"])
    assert "(ICLR 2019)." in capsys.readouterr().out


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_lines_when_stdout_is_not_a_terminal(data_env, tmp_path, capsys, quiet):
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--progress-every", "1e-9",
                        "--out", str(tmp_path / "run"), *(["--quiet"] if quiet else [])]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "ETA" in line]
    if quiet:
        assert lines == []
    else:
        assert len(lines) == 8                                  # one per batch at this interval
        assert lines[-1].startswith("epoch   1 | batch 8/8 | inner steps 0 | train -elbo ")


def test_bench_times_every_kind_and_a_baseline(data_env, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert lagvae.main(["bench", "--preset", "tiny", "--steps", "2", "--rounds", "1", "--baseline", str(ROOT),
                        "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads(out.read_text())
    assert json.loads(printed[-1]) == result and "inner / joint" in printed[-2]
    kinds = [(r["version"], r["kind"]) for r in result["rows"]]
    assert kinds == [(v, k) for v in ("current", "baseline") for k in lagvae.BENCH_KINDS]
    assert all(r["ms"] > 0 and r["examples_per_s"] > 0 and r["speedup"] > 0 for r in result["rows"])
    assert result["inner_over_joint"] > 0 and result["savae_over_basic"] > 0
    assert lagvae.main(["bench", "--preset", "tiny", "--baseline", str(tmp_path)]) == 2
    one_line_error(capsys, "--baseline")
