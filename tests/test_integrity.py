"""Section 4, the run's files after a crash: every file of a run tells the same story."""
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


@pytest.mark.slow
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


def test_a_last_pt_of_another_format_version_is_refused_and_one_without_a_version_resumes(data_env, tmp_path,
                                                                                           monkeypatch, capsys):
    """A last.pt of another version, or one without a version and of an older layout (before row
    counts), is refused in one line that names it and says what to do, and the run's files are left
    as they were; one without a version but with every field of version 1 (the grid in flight, commit
    fcf27fc) resumes: the log keeps one row per finished epoch, not one per started epoch."""
    out = tmp_path / "run"
    flags = ["--epochs", "3", "--checkpoint-minutes", "1e-9"]
    with monkeypatch.context() as m:
        kill_after(m, "end_epoch", 2)
        with pytest.raises(Killed):
            lagvae.main(BASE + flags + ["--out", str(out)])
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["version"] == lagvae.CHECKPOINT_VERSION == 1
    unversioned = {k: v for k, v in ck.items() if k != "version"}
    log = (out / "log.jsonl").read_bytes()
    for bad, says in (({**ck, "version": 2}, "format 2;"), ({**ck, "version": "1"}, "format '1';"),
                      ({k: v for k, v in unversioned.items() if k != "rows"}, "format older, without a version;")):
        torch.save(bad, out / "last.pt")
        assert lagvae.main(BASE + flags + ["--out", str(out), "--resume"]) == 2
        one_line(capsys, f"{out / 'last.pt'} (checkpoint {says} this lagvae reads version 1: finish the run with the "
                         f"lagvae that wrote it", "--overwrite")
        assert (out / "log.jsonl").read_bytes() == log
    torch.save(unversioned, out / "last.pt")
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

    def save_last(path, model, opts, state, rng, device, *rest):
        saves.append(state.epoch)
        if state.current is not None and state.epoch == 3 and saves.count(3) >= 2:
            model.decoder.pred.weight.data.mul_(1e4)
        return real_save(path, model, opts, state, rng, device, *rest)
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
    assert len(err) == 1 and "config.json: not a lagvae run config" in err[0]
    assert lagvae.RUN_FILES[-1] == "config.json"
    (out / "config.json").write_text(config)
    (out / "last.pt.tmp").write_text("half")
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "last.pt.tmp").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_the_cause(synth_root, tmp_path):
    """A write that the OS refuses (here a file-size limit, as a full disk would) names the file and the
    OS's cause; torch.save alone said "file write failed" and nothing of why."""
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "lagvae.py"), *BASE, "--epochs", "1", "--out", str(out),
                           "--data-dir", str(synth_root)], capture_output=True, text=True, preexec_fn=limited,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "cannot write" in err[0] and str(out) in err[0] and "File too large" in err[0], err
    assert not list(out.glob("*.tmp"))


def test_a_failed_append_names_the_file_and_the_cause():
    with pytest.raises(lagvae.UsageError, match=r"cannot write /dev/full \(No space left on device\)"):
        lagvae.append_row(Path("/dev/full"), {"epoch": 1})


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
def test_a_signal_saves_at_the_next_batch_and_the_resumed_run_is_exact(synth_root, uninterrupted_run, tmp_path):
    """A scheduler's SIGTERM mid-run, then Ctrl-C (SIGINT) in the resumed run: each is one line, exit
    128 + signal, last.pt at a batch boundary; the run resumed twice ends with the log, result and
    weights of a run never stopped."""
    base = subprocess_train(synth_root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, stopped = uninterrupted_run, tmp_path / "stopped"
    config = stopped / "config.json"
    # The resumed run rewrites config.json once its checks pass; a signal before its first batch is
    # honoured there, one after its last in its test evaluation: the same line and exit code.
    for sig, resume, wait in ((signal.SIGTERM, [], 1.0), (signal.SIGINT, ["--resume"], 0.3)):
        before = config.stat().st_mtime_ns if config.exists() else None
        proc = subprocess.Popen(base + ["--out", str(stopped), *resume], env=env, stderr=subprocess.PIPE, text=True)
        while not config.exists() or config.stat().st_mtime_ns == before:
            assert proc.poll() is None
            time.sleep(0.02)
        time.sleep(wait)
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
        with pytest.raises(lagvae.UsageError, match=r"model.pt: not a best model of a run \(.*\); restore it or"):
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
@settings(derandomize=True, database=None,
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


# ------------------------------------------------------------------------------------------------
# Issue 37: a checkpoint is data, not code; a refused or repeated command changes nothing; every
# signal is honoured; what a run writes stays inside its run folder.

def one_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lagvae: error: ") and all(n in err[0] for n in needles), err
    return err[0]


@pytest.fixture(scope="module")
def finished(synth_root, tmp_path_factory):
    """A finished one-epoch tiny run; each test works on its own copy (run_copy)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert lagvae.main([*BASE, "--epochs", "1", "--data-dir", str(synth_root), "--out", str(out)]) == 0
    return out


def run_copy(finished, tmp_path):
    import shutil
    return Path(shutil.copytree(finished, tmp_path / "run"))


class Payload:
    """What a crafted checkpoint carries: unpickling it calls open(marker, "w")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_runs_no_code_and_is_a_one_line_refusal(data_env, finished, tmp_path, capsys):
    out, marker = run_copy(finished, tmp_path), tmp_path / "marker"
    real = torch.load(out / "model.pt", weights_only=True)
    torch.save({**real, "model": Payload(marker)}, out / "model.pt")
    (tmp_path / "in.txt").write_text("the cat sat\n")
    ckpt = ["--ckpt", str(out / "model.pt")]
    for argv in (["eval", *ckpt], ["samples", *ckpt, "--reconstruct", str(tmp_path / "in.txt")],
                 ["encode", *ckpt], ["encode", *ckpt, "--input", str(tmp_path / "in.txt")]):
        assert lagvae.main(argv) == 2, argv
        one_line(capsys, "model.pt", "open besides tensors", "refused unread")
    torch.save({**torch.load(out / "last.pt", weights_only=True), "state": Payload(marker)}, out / "last.pt")
    assert lagvae.main(BASE + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    one_line(capsys, "--resume", "last.pt", "open besides tensors", "refused unread")
    assert not marker.exists()


def old_lagvae(tmp_path):
    """lagvae.py, data.py and paper_results.csv of commit fcf27fc, whose files the grid in flight writes
    (without a checkpoint version: version 1's layout)."""
    old = tmp_path / "old"
    old.mkdir()
    for f in ("lagvae.py", "data.py", "paper_results.csv"):
        shown = subprocess.run(["git", "show", f"fcf27fc:{f}"], cwd=ROOT, capture_output=True)
        if shown.returncode:
            pytest.skip("commit fcf27fc is not in this checkout")
        (old / f).write_bytes(shown.stdout)
    (old / "tqdm.py").write_text(SILENT_TQDM)
    return old


# fcf27fc imported tqdm, which requirements.txt no longer installs; its bar was off without a terminal
# anyway, so a silent one stands in for it.
SILENT_TQDM = """class tqdm:
    def __init__(self, iterable=None, **kwargs):
        self.iterable = iterable
    def __iter__(self):
        return iter(self.iterable)
    def update(self, n=1):
        pass
    def close(self):
        pass
"""


KILL_OLD = """import os, sys
sys.path.insert(0, sys.argv[1])
import lagvae
real, n = lagvae.save_last, []
def save_last(*args):
    real(*args)
    n.append(1)
    if len(n) == int(sys.argv[2]):
        os._exit(9)
lagvae.save_last = save_last
lagvae.main(sys.argv[3:])
"""


@pytest.mark.slow
def test_files_of_the_grid_in_flight_load_and_resume_exactly(data_env, tmp_path):
    """A last.pt (mid-epoch 2) and model.pt written by commit fcf27fc, without a version, load with
    weights_only and the resumed run is bit-identical to an uninterrupted run of today's code."""
    flags = BASE + ["--epochs", "2", "--aggressive", "--checkpoint-minutes", "1e-9"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert lagvae.main(flags + ["--out", str(straight)]) == 0
    proc = subprocess.run([sys.executable, "-c", KILL_OLD, str(old_lagvae(tmp_path)), "12", *flags, "--out", str(killed)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 9
    ck = torch.load(killed / "last.pt", weights_only=True)
    assert ck["state"]["run"] is not None and "version" not in ck
    assert lagvae.main(["eval", "--ckpt", str(killed / "model.pt"), "--iw-samples", "2", "--quiet"]) == 0
    assert lagvae.main(flags + ["--out", str(killed), "--resume"]) == 0
    assert untimed(lagvae.read_jsonl(straight / "log.jsonl")) == untimed(lagvae.read_jsonl(killed / "log.jsonl"))
    results = untimed(json.loads((d / "result.json").read_text()) for d in (straight, killed))
    assert results[0] == results[1]
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["model"] for d in (straight, killed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def blow_up_in_epoch(monkeypatch, epoch):
    """The weights blow up at every batch checkpoint of `epoch` after its first."""
    real = lagvae.save_last

    def save_last(path, model, opts, state, *rest):
        if state.current is not None and state.epoch == epoch and state.current.batch >= 2:
            model.decoder.pred.weight.data.mul_(1e4)
        return real(path, model, opts, state, *rest)
    monkeypatch.setattr(lagvae, "save_last", save_last)


def test_a_resume_that_diverges_again_keeps_the_last_good_epoch(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = BASE + ["--epochs", "4", "--checkpoint-minutes", "1e-9", "--out", str(out)]
    blow_up_in_epoch(monkeypatch, 3)
    assert lagvae.main(argv) == 2
    one_line(capsys, "epoch 3:", "last.pt holds the end of epoch 2")
    assert lagvae.main(argv + ["--resume"]) == 2
    one_line(capsys, "epoch 3:", "last.pt holds the end of epoch 2")
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["state"]["epoch"] == 2 and ck["state"]["run"] is None


def other_data(synth_root, tmp_path):
    """A data root whose synthetic training split differs from synth_root's (its first document dropped)."""
    import shutil
    root = tmp_path / "other"
    shutil.copytree(synth_root, root)
    train = root / "synthetic" / "lagvae_synthetic.train.txt"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[1:]))
    return root


def test_a_resume_before_the_first_best_model_refuses_other_data(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = BASE + ["--epochs", "2", "--checkpoint-minutes", "1e-9", "--out", str(out)]
    with monkeypatch.context() as m:
        kill_after(m, "save_last", 2)
        with pytest.raises(Killed):
            lagvae.main(argv)
    assert not (out / "model.pt").exists()
    config = (out / "config.json").read_bytes()
    assert lagvae.main(argv + ["--resume", "--data-dir", str(other_data(data_env, tmp_path))]) == 2
    one_line(capsys, "--resume", "is not the one", "trained on")
    assert (out / "config.json").read_bytes() == config


def test_a_refused_resume_leaves_config_json_as_it_was(data_env, finished, tmp_path, capsys):
    out = run_copy(finished, tmp_path)
    config = (out / "config.json").read_bytes()
    assert lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume",
                               "--data-dir", str(other_data(data_env, tmp_path))]) == 2
    one_line(capsys, "--resume", "is not the one")
    (out / "last.pt").write_bytes(b"garbage")
    assert lagvae.main(BASE + ["--epochs", "3", "--out", str(out), "--resume"]) == 2
    one_line(capsys, "--resume", "last.pt")
    assert (out / "config.json").read_bytes() == config


def test_eval_update_is_refused_while_the_run_trains(data_env, finished, tmp_path, capsys):
    import fcntl
    out = run_copy(finished, tmp_path)
    result = (out / "result.json").read_bytes()
    with open(out / ".lock", "w") as held:                  # as the training process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lagvae.main(["eval", "--ckpt", str(out / "model.pt"), "--update", "--iw-samples", "2"]) == 2
        one_line(capsys, "--update", "another lagvae process")
    assert (out / "result.json").read_bytes() == result
    assert lagvae.main(["eval", "--ckpt", str(out / "model.pt"), "--update", "--iw-samples", "2", "--quiet"]) == 0


def signal_after(monkeypatch, name, when=lambda *a, **kw: True):
    """SIGTERM to this process right after lagvae.<name> returns (where `when` says)."""
    real = getattr(lagvae, name)

    def wrapped(*args, **kw):
        out = real(*args, **kw)
        if when(*args, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(lagvae, name, wrapped)


def test_a_sigterm_at_the_end_of_pretraining_is_honoured(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = BASE + ["--epochs", "1", "--pretrain-encoder", "--out", str(out)]
    with monkeypatch.context() as m:
        signal_after(m, "pretrain_encoder")
        assert lagvae.main(argv) == 128 + signal.SIGTERM
    one_line(capsys, "interrupted by SIGTERM", "pretraining")
    assert not (out / "result.json").exists() and lagvae.STOP.signum is None
    assert lagvae.main(argv + ["--resume"]) == 0 and (out / "result.json").exists()


def test_a_sigterm_during_the_final_test_is_honoured(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = BASE + ["--epochs", "1", "--out", str(out)]
    with monkeypatch.context() as m:
        signal_after(m, "load_best", lambda path, device: path.name == "model.pt")
        assert lagvae.main(argv) == 128 + signal.SIGTERM
    one_line(capsys, "interrupted by SIGTERM", "test evaluation")
    assert not (out / "result.json").exists()
    assert lagvae.main(argv + ["--resume"]) == 0 and (out / "result.json").exists()


@pytest.mark.parametrize("temperature", ["inf", "1e-300", "1e300"])
def test_a_temperature_past_float_range_is_one_line(finished, temperature, capsys):
    ckpt = str(finished / "model.pt")
    assert lagvae.main(["samples", "--ckpt", ckpt, "--decode", "sample", "--temperature", temperature,
                        "--data-dir", str(finished.parent)]) == 2
    one_line(capsys, "--temperature", "finite number in")


def test_the_extreme_temperatures_allowed_sample_cleanly(data_env, finished, tmp_path, capsys):
    for t in ("1e-6", "1e6"):
        assert lagvae.main(["samples", "--ckpt", str(finished / "model.pt"), "--decode", "sample", "--temperature", t,
                            "--out", str(tmp_path / "s.txt")]) == 0


@pytest.mark.parametrize("quiet", [True, False])
def test_a_last_pt_copied_over_model_pt_is_refused(data_env, finished, tmp_path, capsys, quiet):
    out = run_copy(finished, tmp_path)
    result = (out / "result.json").read_bytes()
    (out / "model.pt").write_bytes((out / "last.pt").read_bytes())
    argv = ["train", "--preset", "tiny", "--iw-samples", "5", "--epochs", "1", "--out", str(out), "--resume"]
    assert lagvae.main(argv + ["--quiet"] * quiet) == 2
    one_line(capsys, "model.pt", "not a best model", "a last.pt?")
    assert (out / "result.json").read_bytes() == result


def test_run_files_never_follow_a_link_out_of_the_run_folder(data_env, tmp_path, capsys):
    target = tmp_path / "precious"
    target.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 2
    one_line(capsys, ".lock", "symbolic link")
    (out / ".lock").unlink()
    (out / "config.json.tmp").symlink_to(target)
    assert lagvae.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    assert target.read_text() == "keep me" and not (out / "config.json").is_symlink()


def test_the_default_run_directory_stays_under_runs():
    for data in ("text:../../../../X", "text:/abs/corpus/x", "synthetic"):
        path = lagvae.run_dir(lagvae.resolve_config({"data": data, "preset": "tiny"}))
        assert path.parent == Path("runs"), path


def test_a_forked_config_generates_no_data_under_its_data_dir(data_env, finished, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    saved = json.loads((finished / "config.json").read_text())
    saved["config"]["data_dir"] = str(elsewhere)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert lagvae.main(["train", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "fork")]) == 2
    one_line(capsys, "synthetic", str(elsewhere))
    assert not any(elsewhere.iterdir())


def test_resume_without_last_pt_of_a_run_that_trained_is_refused(data_env, finished, tmp_path, capsys):
    out = run_copy(finished, tmp_path)
    (out / "last.pt").unlink()
    result = (out / "result.json").read_bytes()
    assert lagvae.main(BASE + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    one_line(capsys, "--resume", "no last.pt", "epoch.pt")
    assert (out / "result.json").read_bytes() == result


def test_a_resume_on_another_thread_count_says_it_is_no_longer_exact(data_env, finished, tmp_path, capsys):
    out, threads = run_copy(finished, tmp_path), torch.get_num_threads()
    saved = torch.load(out / "last.pt", weights_only=True)["threads"]
    try:
        assert lagvae.main(BASE[:-3] + ["--iw-samples", "5", "--epochs", "2", "--out", str(out), "--resume",
                                        "--threads", str(saved + 1)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"last.pt was written with {saved} thread(s), this resume runs {saved + 1}" in capsys.readouterr().out


def test_resume_refuses_a_torn_row_among_the_counted_rows(data_env, finished, tmp_path, capsys):
    out = run_copy(finished, tmp_path)
    (out / "log.jsonl").write_text('{"epoch": 1, "val_mi": 0.\n')
    assert lagvae.main(BASE + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    one_line(capsys, "log.jsonl:1", "not a JSON row")


def test_table_and_figure_refuse_nan_from_a_record(finished, tmp_path, capsys):
    out = run_copy(finished, tmp_path)
    result = json.loads((out / "result.json").read_text())
    (out / "result.json").write_text(json.dumps({**result, "kl": float("nan")}))
    assert lagvae.main(["table", str(out)]) == 2
    one_line(capsys, "result.json", "'kl' is nan, expected a number")
    assert lagvae.main(["figure", "nll-au", str(out), "--out", str(tmp_path / "f.png")]) == 2
    one_line(capsys, "'kl' is nan")
    rows = lagvae.read_jsonl(out / "log.jsonl")
    (out / "log.jsonl").write_text(json.dumps({**rows[0], "val_mi": float("inf")}) + "\n")
    assert lagvae.main(["figure", "dynamics", str(out), "--out", str(tmp_path / "f.png")]) == 2
    one_line(capsys, "'val_mi' is inf")


def test_a_diverged_run_is_called_diverged_not_unfinished(data_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    blow_up_in_epoch(monkeypatch, 2)
    assert lagvae.main(BASE + ["--epochs", "3", "--checkpoint-minutes", "1e-9", "--out", str(out)]) == 2
    capsys.readouterr()
    assert lagvae.main(["table", str(out)]) == 0
    err = capsys.readouterr().err
    assert "diverged at epoch 2" in err and "unfinished" not in err
