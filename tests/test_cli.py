"""Section 7: the command line, run directories, resume and error messages."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

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


def test_resume_without_checkpoint_is_a_clear_error(data_env, tmp_path, capsys):
    assert lagvae.main(["train", "--preset", "tiny", "--quiet", "--resume", "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


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
# Issue 12: every bad number, checkpoint and output path is one line and exit 2

def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lagvae: error: "), err
    return err[0]


def test_every_numeric_field_has_a_rule():
    numeric = {f.name for f in dataclasses.fields(lagvae.Config) if f.type in (int, float)}
    assert set(lagvae.NUMBER_RULES) == numeric


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
    (lambda ck: torch.zeros(3), "(no config, model, vocab_size)"),
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
    assert "last.pt holds training state, evaluate model.pt" in one_error_line(capsys)


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
    def allocate(cfg):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 4016000000000 bytes.\nError code 12")
    monkeypatch.setattr(lagvae, "train", allocate)
    assert lagvae.main(["train", "--preset", "tiny"]) == 2
    line = one_error_line(capsys)
    assert "out of memory" in line and "4016000000000 bytes" in line and "--batch-size" in line
    monkeypatch.setattr(lagvae, "train", lambda cfg: 1 / 0)
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
    assert "--n: expected a multiple of 8" in one_error_line(capsys)


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
                 "out", "data_dir", "resume"}
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "0", "1e300", "3.5e38", "1e-320", str(2 ** 63), "-0.0", "x", ""]
TEXT_VALUES = {"data": ["synthetic", "omniglot", "nosuch", "text:/nonexistent/x"],
               "dec_kernels": ["3", "5,3", "4", "", "x", "99", "3,-1"],
               "snapshot_iters": ["", "0", "0,3", "-1", "a", "0,,2"], "optim": ["sgd", "adam", "rmsprop"]}


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


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(FUZZ_FIELDS), min_size=1, max_size=4, unique_by=lambda f: f.name)
       .flatmap(lambda fs: st.tuples(*map(flag_values, fs))))
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
