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
    """A `--list` line's train flags: from `train` to `--resume`, the shell around them dropped."""
    argv = shlex.split(line.split("   # ~")[0])
    end = next(i for i, a in enumerate(argv) if a.startswith("--resume"))
    return argv[argv.index("lagvae.py") + 1:end] + ["--resume"]


def parse_train(argv):
    """The job's config, as `lagvae.py train` resolves it, without training."""
    args = vars(lagvae.build_parser().parse_args(argv))
    assert args.pop("cmd") == "train" and args.pop("func") is lagvae.train_command
    return lagvae.train_config(args)[0]


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


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["cpu", "tiny", "paper"])
def test_every_listed_job_parses_and_validates(tmp_path, scale, templates):
    """Check (a): a flag removed from Config, renamed or given an inadmissible value in run_all.sh fails
    here, not hours into a grid. Jobs are resolved in list order into an empty run root, each then
    stood in for, so that a job reading an earlier run (--decay-at RUN) finds it finished."""
    runs = tmp_path / "runs"
    # the paper grid asks for --device cuda, which validation refuses on a machine without a GPU
    out, _ = run_all(tmp_path, "--list", SCALE=scale, RUNS=str(runs), DEVICE="auto")
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


@pytest.mark.slow
def test_every_table_and_figure_step_runs_on_the_committed_records(tmp_path, templates, synth_root, omni_root):
    """Check (b): run_all.sh's table, figure and sample steps over a copy of runs/ (the committed
    records, the runs without records stood in for by the tiny templates and the committed runs given
    a template's model for the steps that load one)."""
    runs = tmp_path / "runs"
    tracked = subprocess.run(["git", "ls-files", "runs"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():         # the committed records, not runs in flight here
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    # Once every bound is committed no eval step would run; one removed keeps that step tested.
    sorted(runs.glob("bound-*.json"))[0].unlink()
    for run in runs.glob("*/"):                      # checkpoints are never committed
        shutil.copy(templates / ("image" if run.name.startswith("omniglot") else "text") / "model.pt", run)
    listed, _ = run_all(tmp_path, "--list", RUNS=str(runs))
    standins = set()
    for line in listed.splitlines():
        if "lagvae.py train" not in line:            # a finished run's later step (its bound): replayed below
            continue
        cfg = parse_train(listed_train_args(line))
        materialize(cfg, templates / ("image" if cfg.data == "omniglot" else "text"))
        standins.add(Path(cfg.out).name)
    data = tmp_path / "data"           # the templates' data, for the steps that load a model
    data.mkdir()
    (data / "synthetic").symlink_to(synth_root / "synthetic")
    (data / "omniglot").symlink_to(omni_root / "omniglot")
    out, calls = run_all(tmp_path, RUNS=str(runs), LAGVAE_DATA=str(data))
    assert not any(c[1] == "train" for c in calls)          # every run is finished: nothing trains
    steps = [c for c in calls if c[1] in ("table", "figure", "samples", "eval")]
    kinds = {(c[1], c[2]) for c in steps}
    assert {("figure", k) for k in ("posterior", "dynamics", "nll-au", "trajectory", "bound")} <= kinds
    assert sum(c[1] == "table" for c in steps) >= 20 and {"samples", "eval"} <= {c[1] for c in steps}
    samples = [c for c in steps if c[1] == "samples"]
    for call in steps:
        if call[1] == "samples" and call is not samples[0]:      # the same step for another run
            continue
        # Cheaper settings where a step's cost is its sample count: 8 image samples (784 decoder passes
        # each) instead of 32, bounds at K = 1, 2 on 20 documents from one seed instead of up to 5,000
        # on 500 from two.
        cheap = {"samples": ["--n", "8"],
                 "eval": ["--bound", "1,2", "--eval-seeds", "1", "--max-test", "20"]}.get(call[1], [])
        rc, text = replay(call + cheap, ROOT)
        assert rc == 0, call
        if call[1] == "eval":          # run_all.sh sends it to bound-RUN.json beside the run
            ckpt = Path(call[call.index("--ckpt") + 1])
            (ckpt.parent.parent / f"bound-{ckpt.parent.name}.json").write_text(text)
        elif call[1] == "table":
            assert text.count("\n") > 2, call                 # a header, a rule and rows
        else:
            assert Path(call[call.index("--out") + 1]).stat().st_size > 0, call


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.slow
def test_run_all_tries_every_run_and_names_the_one_that_failed(tmp_path, jobs):
    """A failed run (diverged, killed, bad flag) must not stop a grid of days: the rest still run,
    the failure is named, and no table is made from an incomplete grid. Python is faked (PY)."""
    shutil.copy(ROOT / "run_all.sh", tmp_path)
    fake = tmp_path / "fakepy"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> calls.txt\n'
                    '[[ "$*" == *"--out runs/synthetic-nz1-basic-s1 "* ]] && exit 2\nexit 0\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", "run_all.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PY": str(fake), "JOBS": jobs})
    assert r.returncode == 1
    assert "run_all.sh: runs/synthetic-nz1-basic-s1 failed (exit 2), see runs/synthetic-nz1-basic-s1.log" in r.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert any("--out runs/trajectory-aggressive " in c for c in calls)     # the last run was still tried
    assert not any(c.startswith("lagvae.py table --all runs/synthetic-nz1-") for c in calls)   # its section's table
    assert any(c.startswith("lagvae.py table --all runs/modes") for c in calls)         # another section's


def test_run_all_runs_the_named_sections_only_and_into_another_directory(tmp_path):
    """`bash run_all.sh paired` runs the paired grids alone (ptb and OMNIGLOT, then the lr-schedule
    control on Ours' finished run) and makes their paired tables; RUNS= sends a whole rerun elsewhere;
    an unknown section is one line, exit 2."""
    shutil.copy(ROOT / "run_all.sh", tmp_path)
    fake = tmp_path / "fakepy"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> calls.txt\n')
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake)}
    r = subprocess.run(["bash", "run_all.sh", "paired"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**env, "RUNS": "rerun"})
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    trains = [c for c in calls if c.startswith("lagvae.py train")]
    ptb, omniglot = trains[:50], trains[50:]
    assert all("--data ptb" in c and "--out rerun/ptb-cpu-ep30-iw50-" in c for c in ptb)
    assert {c.split("--seed ")[1].split()[0] for c in ptb} == {str(s) for s in range(10)}
    assert len(omniglot) == 10 and all("--data omniglot" in c and "--preset cpu --epochs 100" in c for c in omniglot)
    assert {c.split("--out rerun/")[1].split()[0] for c in omniglot[:9]} == {
        f"omniglot-cpu-decay5-iw50-{m}-s{s}" for m in ("aggressive", "basic", "lm") for s in range(3)}
    assert ("--decay-at rerun/omniglot-cpu-decay5-iw50-aggressive-s0 --seed 0 "
            "--out rerun/omniglot-cpu-decay5-iw50-basic-decayat-s0") in omniglot[9]
    tables = [c for c in calls if c.startswith("lagvae.py table --paired")]
    assert [c.split()[3:5] for c in tables] == [["basic", "aggressive"], ["basic+anneal", "aggressive+anneal"],
                                                ["lm", "aggressive"], ["lm", "aggressive+anneal"],
                                                ["basic", "aggressive"], ["lm", "aggressive"], ["lm", "basic"],
                                                ["basic", "basic+decayat"], ["basic+decayat", "aggressive"]]
    assert all("rerun/omniglot-cpu-decay5-iw50-*-s*/" in c for c in tables[4:])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    r = subprocess.run(["bash", "run_all.sh", "nope"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "run_all.sh: unknown section 'nope' (expected some of: protocol paired synthetic text modes omniglot spread trajectory report)"]


def test_run_all_list_prints_each_unfinished_job_once_and_each_line_runs_it(tmp_path):
    """`--list` is the job list for other schedulers: one runnable command per unfinished run, none
    for a finished one, and a listed line that starts after its run was finished elsewhere does nothing
    (the first line also evaluates the trained model's bound: the fake leaves a model.pt)."""
    shutil.copy(ROOT / "run_all.sh", tmp_path)
    fake = tmp_path / "fakepy"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> calls.txt\n'
                    'while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2" && touch "$2/model.pt"; shift; done\n')
    fake.chmod(0o755)
    (tmp_path / "runs/synthetic-nz1-basic-s0").mkdir(parents=True)
    (tmp_path / "runs/synthetic-nz1-basic-s0/result.json").write_text("{}")
    (tmp_path / "runs/ptb-cpu-decay5-iw500-basic-s2").mkdir()     # finished, its bound too: nothing left
    (tmp_path / "runs/ptb-cpu-decay5-iw500-basic-s2/result.json").write_text("{}")
    (tmp_path / "runs/bound-ptb-cpu-decay5-iw500-basic-s2.json").write_text("{}")
    env = {**os.environ, "PY": str(fake)}
    r = subprocess.run(["bash", "run_all.sh", "--list"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert not any("ptb-cpu-decay5-iw500-basic-s2" in line for line in lines)
    outs = [line.split("--out ")[1].split()[0] for line in lines]
    assert len(outs) == len(set(outs)) > 100 and "runs/synthetic-nz1-basic-s0" not in outs
    assert {"runs/synthetic-nz1-basic-s1", "runs/ptb-cpu-ep30-iw50-aggressive-anneal-s2",
            "runs/trajectory-aggressive"} <= set(outs)
    listed = (tmp_path / "calls.txt").read_text().splitlines()
    assert listed and all(c.startswith("data.py") for c in listed)      # listing checks the data, trains nothing
    (tmp_path / "calls.txt").unlink()
    first, second = lines[0], lines[1]
    subprocess.run(["bash", "-c", first], cwd=tmp_path, check=True, timeout=60, env=env)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[0].startswith("lagvae.py train ") and f"--out {outs[0]} --resume" in calls[0]
    assert calls[1].startswith(f"lagvae.py eval --ckpt {outs[0]}/model.pt") and "--bound" in calls[1]
    (tmp_path / outs[1]).mkdir(parents=True)           # finished meanwhile: its line is a no-op
    (tmp_path / outs[1] / "result.json").write_text("{}")
    subprocess.run(["bash", "-c", second], cwd=tmp_path, check=True, timeout=60, env=env)
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2


TINY_TABLES = ["table_bound_ptb.md", "table_modes.md", "table_omniglot.md", "table_omniglot_30.md",
               "table_omniglot_by_run.md", "table_paired_omniglot.md", "table_paired_ptb.md", "table_protocol_ptb.md",
               "table_spread.md", "table_synthetic_nz1.md", "table_text.md", "table_text_enclr.md", "table_text_inner.md",
               "table_text_warmup.md"]
TINY_FIGURES = ["bound_ptb.png", "dynamics_modes.png", "dynamics_omniglot.png", "dynamics_ptb.png", "dynamics_synthetic.png",
                "nll_au_modes.png", "nll_au_ptb.png", "nll_au_synthetic.png", "nll_au_yahoo.png",
                "omniglot_samples_aggressive.png", "omniglot_samples_basic.png", "posterior_means.png", "trajectory.png"]


@pytest.mark.skipif(not os.environ.get("LAGVAE_PREFLIGHT") or not os.environ.get("LAGVAE_DATA"),
                    reason="the pre-flight check (~11 min): LAGVAE_PREFLIGHT=1 with LAGVAE_DATA set")
def test_run_all_tiny_runs_every_job_of_the_grid_to_its_tables_and_figures(tmp_path):
    """SCALE=tiny: every job of the cpu grid with its own flags at the tiny preset, end to end, so that
    a flag that no longer parses or a table or figure step that breaks on real outputs fails here
    and not hours into the real grid. The real runs/ is never touched."""
    for f in ("run_all.sh", "lagvae.py", "data.py", "paper_results.csv"):
        shutil.copy(ROOT / f, tmp_path)
    env = {**os.environ, "SCALE": "tiny", "JOBS": "2", "PY": sys.executable,
           "LAGVAE_DATA": str(Path(os.environ["LAGVAE_DATA"]).resolve())}
    jobs = subprocess.run(["bash", "run_all.sh", "--list"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, check=True).stdout.splitlines()
    full = subprocess.run(["bash", "run_all.sh", "--list"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "SCALE": "cpu", "SEEDS": "0", "PAIRED_SEEDS": "0 1", "TEXT_SEEDS": "0",
                               "IMAGE_SEEDS": "0", "IMAGE_PAIRED_SEEDS": "0 1", "RUNS": "cpu-list"},
                          check=True).stdout.splitlines()
    name = lambda line: line.split("--out ")[1].split()[0].split("/", 1)[1]
    assert len(jobs) == len(full) == 89 and [name(j) for j in jobs] == [name(j) for j in full]
    assert all("--preset tiny --max-len 30 --max-vocab 2000 --max-test 100" in j and "--epochs" not in j for j in jobs)
    r = subprocess.run(["bash", "run_all.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = tmp_path / "runs-tiny"
    assert all((runs / name(j) / "result.json").exists() for j in jobs)
    assert sorted(p.name for p in runs.glob("table_*.md")) == TINY_TABLES
    assert all(len((runs / t).read_text().splitlines()) > 2 for t in TINY_TABLES)     # a header and rows
    assert sorted(p.name for p in (runs / "figures").iterdir()) == TINY_FIGURES
    assert len(list(runs.glob("evalseeds-*-cpu-*-s0.json"))) == 6
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()
    again = subprocess.run(["bash", "run_all.sh", "--list"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout == ""        # finished: nothing left to run


@pytest.mark.slow
def test_run_all_lists_the_papers_grid_with_gpu_hours_and_checks_its_data(tmp_path):
    """SCALE=paper: Yahoo, Yelp and OMNIGLOT at --preset paper, 5 seeds, Tables 4 and 10 on Yelp; each
    listed job ends with its estimated GPU-hours; without the data it stops before any run."""
    shutil.copy(ROOT / "run_all.sh", tmp_path)
    r = subprocess.run(["bash", "run_all.sh", "--list"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SCALE": "paper", "PY": "true"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 232 and all("--preset paper" in line and line.rstrip().endswith("GPU-h") for line in lines)
    outs = {line.split("--out ")[1].split()[0] for line in lines}
    assert {"runs/yahoo-paper-aggressive-s4", "runs/omniglot-paper-savae-anneal-s0", "runs/yelp-paper-inner10-s0",
            "runs/yelp-paper-enclr6-s0", "runs/yelp-paper-anneal120000-from0-s2"} <= outs
    assert not any("ptb" in o or "-cpu-" in o for o in outs)
    empty = tmp_path / "nodata"
    empty.mkdir()
    shutil.copy(ROOT / "data.py", tmp_path)
    r = subprocess.run(["bash", "run_all.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SCALE": "paper", "LAGVAE_DATA": str(empty), "PY": sys.executable})
    assert r.returncode == 2 and "section paper needs data that is missing" in r.stderr and "yahoo: MISSING" in r.stderr


@pytest.mark.slow
def test_listed_jobs_carry_only_the_users_data_root_and_check_it(tmp_path):
    """A job list for a cluster: without LAGVAE_DATA no job names a data root of this checkout (each
    then looks where lagvae does), with it the real-data jobs name it; and listing checks the data as a
    run would, stopping before any line when a section's corpus is missing."""
    env = {k: v for k, v in os.environ.items() if k != "LAGVAE_DATA"}
    fake = tmp_path / "recorder"
    fake.write_text(RECORDER)
    fake.chmod(0o755)
    listing = lambda **e: subprocess.run(["bash", str(ROOT / "run_all.sh"), "--list"], capture_output=True, text=True,
                                         timeout=120, env={**env, "PY": str(fake), "CALLS": str(tmp_path / "c"),
                                                           "RUNS": str(tmp_path / "runs"), **e})
    lines = listing().stdout.splitlines()
    assert len(lines) > 200 and not any("--data-dir" in line and "--data-dir data " not in line for line in lines)
    lines = listing(LAGVAE_DATA="/data/root").stdout.splitlines()
    real = [line for line in lines if "--data synthetic" not in line]
    assert real and all("--data-dir /data/root " in line for line in real)
    (tmp_path / "empty").mkdir()
    r = listing(LAGVAE_DATA=str(tmp_path / "empty"), PY=sys.executable)
    assert r.returncode == 2 and r.stdout == ""
    assert "run_all.sh: section protocol needs data that is missing" in r.stderr and "ptb: MISSING" in r.stderr
