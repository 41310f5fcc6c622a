"""run_all.sh without training: (a) every job it lists, at every scale, goes through the real parser
and config validation; (b) every table, figure and sample step of the cpu grid runs, in this process,
over a copy of the committed records, with tiny stand-ins for the runs that have no committed records.
The true end-to-end tiny grid is the opt-in pre-flight check below (LAGVAE_PREFLIGHT=1)."""
import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import lagvae

ROOT = Path(__file__).resolve().parents[1]

RECORDER = "#!/usr/bin/env bash\nprintf '%q ' \"$@\" >> \"$CALLS\"\necho >> \"$CALLS\"\n"


def run_all(tmp_path, *args, script=ROOT / "run_all.sh", **env):
    """run_all.sh with a recording stand-in for Python: returns (stdout, the recorded calls as argv lists)."""
    fake = tmp_path / "recorder"
    fake.write_text(RECORDER)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PY": str(fake), "CALLS": str(calls), **env})
    assert r.returncode == 0, r.stderr
    return r.stdout, [shlex.split(c) for c in calls.read_text().splitlines()] if calls.exists() else []


def listed_train_args(line):
    """A `--list` line's train flags: after `lagvae.py train`, its shell prefix and comment dropped."""
    argv = shlex.split(line.split("   # ~")[0], comments=True)
    return argv[argv.index("lagvae.py") + 1:]


def parse_train(argv):
    """The job's config, as `lagvae.py train` resolves it, without training."""
    args = vars(lagvae.build_parser().parse_args(argv))
    assert args.pop("cmd") == "train"
    return lagvae.resolve_config(args)


def materialize(cfg, template):
    """A finished stand-in for the run cfg describes: the template run's files under cfg's config,
    mode, dataset and seed."""
    out = Path(cfg.out)
    out.mkdir(parents=True)
    for f in template.iterdir():
        if f.name not in ("config.json", "result.json", ".lock"):
            shutil.copy(f, out / f.name)
    env = json.loads((template / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**env, "config": asdict(cfg), "mode": lagvae.mode_name(cfg)}))
    result = json.loads((template / "result.json").read_text())
    (out / "result.json").write_text(json.dumps({**result, "data": cfg.data, "mode": lagvae.mode_name(cfg),
                                                 "preset": cfg.preset, "seed": cfg.seed}))


@pytest.fixture(scope="session")
def templates(synth_root, omni_root, tmp_path_factory):
    """One tiny trained run of each kind: text (scalar z, with snapshots and a trajectory, for every
    figure) and image (with model.pt, for the samples step)."""
    root = tmp_path_factory.mktemp("templates")
    common = {"preset": "tiny", "quiet": True, "threads": 1, "epochs": 1, "iw_samples": 5}
    lagvae.train(lagvae.resolve_config({**common, "data_dir": str(synth_root), "nz": 1, "snapshot_iters": "0,2",
                                        "trajectory_iters": 2, "out": str(root / "text")}))
    lagvae.train(lagvae.resolve_config({**common, "data": "omniglot", "data_dir": str(omni_root),
                                        "out": str(root / "image")}))
    return root


@pytest.mark.parametrize("scale", ["cpu", "tiny", "paper"])
def test_every_listed_job_parses_and_validates(tmp_path, scale, templates):
    """Check (a): a flag removed from Config, renamed or given an inadmissible value in run_all.sh fails
    here, not hours into a grid. Jobs are resolved in list order into an empty run root, each then
    stood in for, so that a job reading an earlier run (--decay-at RUN) finds it finished."""
    runs = tmp_path / "runs"
    out, _ = run_all(tmp_path, "--list", SCALE=scale, RUNS=str(runs))
    lines = out.splitlines()
    assert len(lines) == {"cpu": 246, "tiny": 89, "paper": 232}[scale]
    for line in lines:
        cfg = parse_train(listed_train_args(line))
        assert cfg.resume and Path(cfg.out).parent == runs, line
        assert (cfg.preset == "tiny") == (scale == "tiny") and (cfg.preset == "paper") == (scale == "paper"), line
        materialize(cfg, templates / ("image" if cfg.data == "omniglot" else "text"))


def test_a_flag_config_lacks_is_caught(tmp_path):
    """The check above can fail: a grid job with a flag that Config does not have (here --kl-start
    renamed, as a field renamed in Config would leave run_all.sh) is refused."""
    script = tmp_path / "run_all.sh"
    script.write_text((ROOT / "run_all.sh").read_text().replace("--kl-start", "--kl-begin"))
    out, _ = run_all(tmp_path, "--list", "text", script=script, RUNS=str(tmp_path / "runs"))
    line = next(line for line in out.splitlines() if "--kl-begin" in line)
    with pytest.raises(SystemExit):
        parse_train(listed_train_args(line))


def replay(call, cwd):
    """One recorded `lagvae.py ...` step, run in this process from cwd: (exit code, stdout)."""
    assert call[0] == "lagvae.py", call
    buf = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf):
            rc = lagvae.main(call[1:])
    finally:
        os.chdir(old)
    return rc, buf.getvalue()


def test_every_table_and_figure_step_runs_on_the_committed_records(tmp_path, templates, omni_root):
    """Check (b): run_all.sh's table, figure and sample steps over a copy of runs/ (the committed
    records), the runs without records stood in for by the tiny templates, and the committed OMNIGLOT
    runs given the template's model for the samples step (checkpoints are never committed)."""
    runs = tmp_path / "runs"
    tracked = subprocess.run(["git", "ls-files", "runs"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():         # the committed records, not runs in flight here
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    for run in runs.glob("omniglot-*/"):
        shutil.copy(templates / "image" / "model.pt", run)
    listed, _ = run_all(tmp_path, "--list", RUNS=str(runs))
    standins = set()
    for line in listed.splitlines():
        cfg = parse_train(listed_train_args(line))
        materialize(cfg, templates / ("image" if cfg.data == "omniglot" else "text"))
        standins.add(Path(cfg.out).name)
    out, calls = run_all(tmp_path, RUNS=str(runs), LAGVAE_DATA=str(omni_root))     # the samples step's data
    assert not any(c[1] == "train" for c in calls)          # every run is finished: nothing trains
    steps = [c for c in calls if c[1] in ("table", "figure", "samples")]
    kinds = {(c[1], c[2]) for c in steps}
    assert {("figure", k) for k in ("posterior", "dynamics", "nll-au", "trajectory")} <= kinds
    assert sum(c[1] == "table" for c in steps) >= 20 and any(c[1] == "samples" for c in steps)
    for call in steps:
        # Image samples are drawn pixel by pixel (784 passes each): 8 instead of 32 check the step as well.
        rc, text = replay(call + (["--n", "8"] if call[1] == "samples" else []), ROOT)
        assert rc == 0, call
        if call[1] == "table":
            assert text.count("\n") > 2, call                 # a header, a rule and rows
        else:
            assert Path(call[call.index("--out") + 1]).stat().st_size > 0, call
