"""Section 5, the run's files after a crash: every file of a run tells the same story (issue 27)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import lagvae
from conftest import subprocess_train

ROOT = Path(__file__).resolve().parents[1]
BASE = ["train", "--preset", "tiny", "--quiet", "--iw-samples", "5"]


class Killed(BaseException):
    """A kill -9 at a chosen point, in process: nothing after it runs, no handler sees it."""


def untimed(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def kill_after(monkeypatch, name, calls):
    """Raise Killed right after the `calls`-th return of lagvae.<name>."""
    real, n = getattr(lagvae, name), []

    def wrapped(*args, **kw):
        out = real(*args, **kw)
        n.append(1)
        if len(n) == calls:
            raise Killed
        return out
    monkeypatch.setattr(lagvae, name, wrapped)


def test_a_kill_between_an_epochs_log_row_and_its_checkpoint_leaves_no_repeated_row(data_env, tmp_path, monkeypatch):
    """The log row of epoch 2 is written, the process dies before the end-of-epoch last.pt (which
    still holds the batch checkpoint of epoch 2): the resumed log must not hold epoch 2 twice."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    flags = ["--epochs", "3", "--aggressive", "--checkpoint-minutes", "1e-9"]      # a batch checkpoint every batch
    assert lagvae.main(BASE + flags + ["--out", str(straight)]) == 0
    with monkeypatch.context() as m:
        kill_after(m, "end_epoch", 2)
        with pytest.raises(Killed):
            lagvae.main(BASE + flags + ["--out", str(killed)])
    assert len(lagvae.read_jsonl(killed / "log.jsonl")) == 2
    assert torch.load(killed / "last.pt", weights_only=False)["state"]["run"] is not None     # mid-epoch 2
    assert lagvae.main(BASE + flags + ["--out", str(killed), "--resume"]) == 0
    log = lagvae.read_jsonl(killed / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert untimed(log) == untimed(lagvae.read_jsonl(straight / "log.jsonl"))
    results = untimed(json.loads((d / "result.json").read_text()) for d in (straight, killed))
    assert results[0] == results[1]


def test_resume_of_a_checkpoint_from_before_row_counts_keeps_the_finished_epochs_rows(data_env, tmp_path, monkeypatch):
    """last.pt files written before they counted rows (the grid's in-flight runs) still resume: the
    log keeps one row per finished epoch, not one per started epoch."""
    out = tmp_path / "run"
    flags = ["--epochs", "3", "--checkpoint-minutes", "1e-9"]
    with monkeypatch.context() as m:
        kill_after(m, "end_epoch", 2)
        with pytest.raises(Killed):
            lagvae.main(BASE + flags + ["--out", str(out)])
    ck = torch.load(out / "last.pt", weights_only=False)
    del ck["rows"]
    torch.save(ck, out / "last.pt")
    assert lagvae.main(BASE + flags + ["--out", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in lagvae.read_jsonl(out / "log.jsonl")] == [1, 2, 3]


def test_a_log_with_fewer_rows_than_the_checkpoint_is_refused(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "2", "--out", str(out)]) == 0
    rows = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text(rows[0] + "\n")
    assert lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "log.jsonl has 1 rows but" in err[0] and "disagree" in err[0]
    (out / "log.jsonl").unlink()
    assert lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "log.jsonl" in err[0] and "expects 2 rows" in err[0]


@pytest.mark.slow
def test_a_finished_run_trained_further_is_unfinished_until_its_new_result(data_env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    with monkeypatch.context() as m:
        kill_after(m, "end_epoch", 1)
        with pytest.raises(Killed):
            lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume"])
    assert not (out / "result.json").exists()           # no reader takes it for the 1-epoch run
    assert lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "result.json").read_text())["epochs"] == 3


def test_a_divergence_leaves_last_pt_at_the_last_validated_epoch(data_env, tmp_path, monkeypatch, capsys):
    """The weights blow up in the middle of epoch 3, at its batch checkpoints; the validation at its
    end stops the run, and last.pt goes back to the end of epoch 2 rather than keep the blown-up state."""
    out, real_save, saves = tmp_path / "run", lagvae.save_last, []

    def save_last(path, model, opts, state, rng, device):
        saves.append(state.epoch)
        if state.current is not None and state.epoch == 3 and saves.count(3) >= 2:
            model.decoder.pred.weight.data.mul_(1e4)
        return real_save(path, model, opts, state, rng, device)
    monkeypatch.setattr(lagvae, "save_last", save_last)
    assert lagvae.main(BASE + ["--epochs", "5", "--checkpoint-minutes", "1e-9", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch 3:" in err[0] and "last.pt holds the end of epoch 2" in err[0]
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 2 and ck["state"]["run"] is None
    assert ck["model"]["decoder.pred.weight"].abs().max() < 100
    assert not (out / "epoch.pt").exists() and not (out / "result.json").exists()


@pytest.mark.slow
def test_resume_needs_the_runs_config(data_env, tmp_path, capsys):
    """Without config.json nothing says which settings made the files: --resume with another seed
    would relabel the run. An overwrite removes config.json last, so a kill during it cannot get here."""
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    config = (out / "config.json").read_text()
    (out / "config.json").unlink()
    assert lagvae.main(BASE + ["--epochs", "2", "--seed", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.json" in err[0]
    (out / "config.json").write_text('{"config": null}')
    assert lagvae.main(BASE + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json is not a lagvae run config" in err[0]
    assert lagvae.RUN_FILES[-1] == "config.json"
    (out / "config.json").write_text(config)
    (out / "last.pt.tmp").write_text("half")
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "last.pt.tmp").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed\nNo space left on device")
    monkeypatch.setattr(torch, "save", full)
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and str(out) in err[0]
    assert not list(out.glob("*.tmp"))


def test_a_test_evaluation_that_is_not_finite_writes_no_result(data_env, tmp_path, monkeypatch, capsys):
    real = lagvae.evaluate

    def evaluate(model, batches, cfg, *args, desc="eval", **kw):
        out = real(model, batches, cfg, *args, desc=desc, **kw)
        return {**out, "iw_nll": float("nan")} if desc == "test" else out
    monkeypatch.setattr(lagvae, "evaluate", evaluate)
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iw_nll nan" in err[0] and "no result.json" in err[0]
    assert not (out / "result.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_batch_and_the_resumed_run_is_exact(synth_root, uninterrupted_run, tmp_path, sig):
    """A scheduler's SIGTERM (or Ctrl-C) mid-run: one line, exit 128 + signal, last.pt at a batch
    boundary; the resumed run's log, result and weights are those of a run never stopped."""
    base = subprocess_train(synth_root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, stopped = uninterrupted_run, tmp_path / "stopped"
    proc = subprocess.Popen(base + ["--out", str(stopped)], env=env, stderr=subprocess.PIPE, text=True)
    while not (stopped / "config.json").exists():
        assert proc.poll() is None
        time.sleep(0.02)
    time.sleep(1.0)                   # into the training batches
    proc.send_signal(sig)
    err = proc.communicate(timeout=300)[1].strip().splitlines()
    assert proc.returncode == 128 + sig, err
    assert len(err) == 1 and f"interrupted by {signal.Signals(sig).name} at " in err[0] and "--resume" in err[0]
    assert not (stopped / "result.json").exists() and (stopped / "last.pt").exists()
    subprocess.run(base + ["--out", str(stopped), "--resume"], check=True, env=env, timeout=600)
    assert untimed(lagvae.read_jsonl(straight / "log.jsonl")) == untimed(lagvae.read_jsonl(stopped / "log.jsonl"))
    results = untimed(json.loads((d / "result.json").read_text()) for d in (straight, stopped))
    assert results[0] == results[1]
    wa, wb = (torch.load(d / "model.pt", weights_only=False)["model"] for d in (straight, stopped))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


SNAP = ["--nz", "1", "--snapshot-iters", "0,2,5", "--trajectory-iters", "6", "--grid-stride", "0.5"]
KILL_POINTS = [("save_last", 1), ("save_last", 4), ("save_last", 9), ("end_epoch", 1), ("record_snapshot", 3),
               ("record_snapshot", 9)]


@pytest.mark.slow
def test_kill_at_every_kind_of_write_then_resume_gives_every_file_of_the_uninterrupted_run(data_env, tmp_path,
                                                                                           monkeypatch):
    """Kill points after a batch checkpoint, after an epoch's log row and after a snapshot or trajectory
    row (before the checkpoint that owns it): the resumed run's log, snapshots, trajectory and result
    are those of the run never killed, row for row."""
    flags = BASE + ["--epochs", "2", "--aggressive", "--checkpoint-minutes", "1e-9"] + SNAP
    straight = tmp_path / "straight"
    assert lagvae.main(flags + ["--out", str(straight)]) == 0
    files = ("log.jsonl", "snapshots.jsonl", "trajectory.jsonl")
    for name, calls in KILL_POINTS:
        out = tmp_path / f"{name}-{calls}"
        with monkeypatch.context() as m:
            kill_after(m, name, calls)
            with pytest.raises(Killed):
                lagvae.main(flags + ["--out", str(out)])
        with open(out / "snapshots.jsonl", "a") as f:          # and a row torn by the kill
            f.write('{"iter": 3, "model_mean": [0.1')
        assert lagvae.main(flags + ["--out", str(out), "--resume"]) == 0, (name, calls)
        for f in files:
            rows = [untimed(lagvae.read_jsonl(d / f)) for d in (straight, out)]
            assert rows[0] == rows[1], (name, calls, f)
        results = untimed(json.loads((d / "result.json").read_text()) for d in (straight, out))
        assert results[0] == results[1], (name, calls)


def test_a_corrupt_best_model_is_one_line_naming_it(tmp_path):
    for content in (b"", b"\x80\x02garbage", b"PK\x03\x04"):
        (tmp_path / "model.pt").write_bytes(content)
        with pytest.raises(lagvae.UsageError, match=r"model.pt: not readable as a lagvae checkpoint"):
            lagvae.load_best(tmp_path / "model.pt", torch.device("cpu"))


def test_a_bad_row_of_a_log_is_named_by_its_own_line_and_column(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,, }\n')
    with pytest.raises(lagvae.UsageError, match=r"log.jsonl:2: not JSON \(.* at column 13\)"):
        lagvae.read_jsonl(tmp_path / "log.jsonl")


def test_encode_checks_its_output_first_and_overwrite_removes_latents(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    assert lagvae.main(["encode", "--ckpt", str(out / "model.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]
    assert lagvae.main(["encode", "--ckpt", str(out / "model.pt")]) == 0
    assert (out / "latents.test.npz").exists()
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "latents.test.npz").exists()


def test_a_synthetic_checkpoint_does_not_generate_data_under_a_new_data_dir(data_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    assert lagvae.main(["eval", "--ckpt", str(out / "model.pt"), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic" in err[0] and "prepare synthetic" in err[0]
    assert not any(empty.iterdir())


def test_the_issues_divergence_command_leaves_one_row_per_epoch_after_resume(data_env, tmp_path):
    """train --subset 400 --epochs 6 --lr 2 --clip-grad 1e30 with batch checkpoints stopped at epoch 5
    on one machine and, resumed, left epochs [1, 2, 3, 4, 5, 5]. Whether and when it diverges depends
    on the processor; whichever way, the log must hold each epoch once and last.pt a validated epoch."""
    out = tmp_path / "run"
    argv = ["train", "--data", "synthetic", "--preset", "tiny", "--subset", "400", "--epochs", "6", "--lr", "2",
            "--clip-grad", "1e30", "--checkpoint-minutes", "0.0005", "--iw-samples", "5", "--quiet", "--out", str(out)]
    rc = lagvae.main(argv)
    for _ in range(2):
        epochs = [r["epoch"] for r in lagvae.read_jsonl(out / "log.jsonl")]
        assert epochs == list(range(1, len(epochs) + 1))
        if rc == 2 and (out / "last.pt").exists():
            ck = torch.load(out / "last.pt", weights_only=False)
            assert ck["state"]["run"] is None and ck["rows"]["log.jsonl"] == ck["state"]["epoch"] == len(epochs) - 1
        rc = lagvae.main(argv + ["--resume"])
        assert rc in (0, 2)


# Fuzz: every subcommand but train (fuzzed in test_cli) with good and bad values; a bad one is one line.
def fuzz_values(tmp):
    return {
        "eval": [["--iw-samples", v] for v in ("0", "3", "-1", "x")] + [["--mi-samples", v] for v in ("0", "2", "x")]
                + [["--device", v] for v in ("cpu", "tpu", "cuda:x")] + [["--data-dir", v] for v in ("/nonexistent", "")]
                + [["--update"], ["--quiet"]],
        "samples": [["--n", v] for v in ("0", "2", "2000", "x")] + [["--decode", v] for v in ("greedy", "beam", "x")]
                   + [["--beam-size", v] for v in ("0", "2")] + [["--temperature", v] for v in ("0", "0.5", "nan", "-1")]
                   + [["--max-len", v] for v in ("0", "4")] + [["--interpolate", a, b] for a, b in (("0", "1"), ("0", "999"))]
                   + [["--out", v] for v in (f"{tmp}/s.txt", f"{tmp}/s.png", str(tmp), "/nonexistent/s.txt")]
                   + [["--reconstruct", v] for v in (f"{tmp}/in.txt", "/nonexistent", f"{tmp}/empty.txt", f"{tmp}/bin.txt")],
        "encode": [["--split", v] for v in ("train", "test", "x")] + [["--out", v] for v in (f"{tmp}/z.npz", str(tmp))]
                  + [["--input", v] for v in (f"{tmp}/in.txt", "/nonexistent", f"{tmp}/empty.txt", f"{tmp}/bin.txt")],
        "table": [["--format", v] for v in ("md", "csv", "x")] + [["--by-run"], ["--paired", "basic", "aggressive"],
                  ["--paired", "basic", "basic"], ["--paper-data", "yelp"], ["--paper-table", "4"], ["--paper-table", "99"]],
        "figure": [["--out", v] for v in (f"{tmp}/f.png", str(tmp), f"{tmp}/f.docx")],
    }


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_subcommands_never_escape_as_exceptions(data_env, tmp_path, capsys, data):
    run = tmp_path / "run"
    if not run.exists():
        assert lagvae.main(BASE + ["--epochs", "1", "--out", str(run)]) == 0
        (tmp_path / "in.txt").write_text("the cat sat\n")
        (tmp_path / "empty.txt").write_text("")
        (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 bad")
    values = fuzz_values(tmp_path)
    cmd = data.draw(st.sampled_from(sorted(values)))
    flags = data.draw(st.lists(st.sampled_from(values[cmd]), max_size=3))
    head = {"table": ["table", str(run)], "figure": ["figure", data.draw(st.sampled_from(["dynamics", "nll-au", "x"])),
                                                       str(run)]}.get(cmd, [cmd, "--ckpt", str(run / "model.pt")])
    argv = head + [a for f in flags for a in f]
    if cmd == "figure" and not any(f[0] == "--out" for f in flags):
        argv += ["--out", str(tmp_path / "g.png")]
    capsys.readouterr()
    try:
        rc = lagvae.main(argv)
    except SystemExit as e:         # argparse: a value of the wrong type
        rc = e.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("lagvae: note")
           and " outside the vocabulary " not in line and ": result.json: " not in line]
    assert rc in (0, 2), argv
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("lagvae"), (argv, err)
