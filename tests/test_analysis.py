"""Section 8: tables from run directories."""
import json

import numpy as np
import pytest

import lagvae


def fake_run(root, name, **result):
    d = root / name
    d.mkdir()
    base = dict(data="synthetic", mode="basic", seed=0, iw_nll=40.0, elbo=41.0, kl=0.0, mi=0.0,
                mi_full=0.0, au=0, train_seconds=10.0)
    (d / "result.json").write_text(json.dumps({**base, **result}))
    return d


def test_summary_means_stds_counts_and_time_ratio(tmp_path):
    dirs = [fake_run(tmp_path, "b0", seed=0, iw_nll=40.0, train_seconds=10.0),
            fake_run(tmp_path, "b1", seed=1, iw_nll=42.0, train_seconds=14.0),
            fake_run(tmp_path, "a0", mode="aggressive", seed=0, iw_nll=38.0, kl=1.5, mi=1.2, au=1,
                     train_seconds=60.0),
            fake_run(tmp_path, "a1", mode="aggressive", seed=1, iw_nll=39.0, kl=0.05, mi=0.01, au=0,
                     train_seconds=36.0)]
    rows = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs))}
    assert rows["basic"]["iw_nll"] == 41.0 and rows["basic"]["iw_nll_std"] == pytest.approx(2 ** 0.5)
    assert (rows["basic"]["collapsed"], rows["basic"]["escaped"]) == (2, 0)
    assert (rows["aggressive"]["collapsed"], rows["aggressive"]["escaped"]) == (1, 1)
    assert rows["aggressive"]["time_ratio"] == pytest.approx(48 / 12)
    md = lagvae.format_table(list(rows.values()))
    assert "| synthetic | aggressive | 0 1 | 2 | 1 | 1 | 38.50 (0.71) |" in md      # seeds, then how many
    csv = lagvae.format_table(list(rows.values()), "csv").splitlines()
    assert len(csv) == 3 and csv[0].startswith("data,mode,seeds")


def test_collapse_caps_the_mi_estimate_by_the_kl():
    state = lambda **r: lagvae.collapse_state({"au": 0, "mi": 0.0, **r})
    assert state(mi=0.13, kl=0.04) == "collapsed"         # MI <= KL: 0.13 is the estimator's bias
    assert state(mi=0.13, kl=0.5) == state(mi=0.13) == "between"
    assert state(au=3, mi=0.8, kl=0.4) == "between" and state(au=3, mi=0.8, kl=2.0) == "escaped"


def test_step_ratio_against_basic_and_the_papers_aggressive_row_for_the_adaptive_rule(tmp_path):
    dirs = [fake_run(tmp_path, "b", data="omniglot", steps=1000, train_seconds=10.0),
            fake_run(tmp_path, "a", data="omniglot", mode="aggressive-adaptive", steps=2400, train_seconds=40.0),
            fake_run(tmp_path, "old", data="omniglot", mode="aggressive", train_seconds=40.0)]    # before step counts
    rows = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs))}
    assert rows["aggressive-adaptive"]["step_ratio"] == pytest.approx(2.4)
    assert rows["aggressive-adaptive"]["time_ratio"] == pytest.approx(4.0)
    assert rows["aggressive"]["step_ratio"] is None
    assert rows["aggressive-adaptive"]["paper_nll"] == 89.05


def test_table_cli_rejects_a_directory_without_results(tmp_path, capsys):
    assert lagvae.main(["table", str(tmp_path)]) == 2
    assert "result.json" in capsys.readouterr().err


def test_table_leaves_out_unfinished_runs(tmp_path, capsys):
    done = fake_run(tmp_path, "done", data="synthetic", mode="basic")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "config.json").write_text("{}")
    assert lagvae.main(["table", str(done), str(tmp_path / "running")]) == 0
    out, err = capsys.readouterr()
    assert "| synthetic | basic |" in out and "running: unfinished" in err


def test_a_run_still_pretraining_its_encoder_is_left_out_of_tables_and_figures(tmp_path, capsys):
    """--pretrain-encoder trains the autoencoder in pretrain/ before the run's own config.json exists;
    a grid's table or figure must not stop at such a run."""
    done = fake_trained_run(tmp_path, "done", "basic", 0.0)
    (tmp_path / "pre" / "pretrain").mkdir(parents=True)
    (tmp_path / "pre" / ".lock").write_text("")
    assert lagvae.main(["table", str(done), str(tmp_path / "pre")]) == 0
    assert "pre: unfinished" in capsys.readouterr().err
    assert lagvae.main(["figure", "nll-au", str(done), str(tmp_path / "pre"), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0


def test_summary_carries_the_papers_numbers(tmp_path):
    rows = lagvae.summarize(lagvae.load_results([
        fake_run(tmp_path, "o", data="omniglot", mode="aggressive"),
        fake_run(tmp_path, "y", data="yahoo-small", mode="savae+anneal"),
        fake_run(tmp_path, "s", data="synthetic", mode="aggressive")]))
    by = {r["data"]: r for r in rows}
    assert by["omniglot"]["paper_nll"] == 89.05 and by["omniglot"]["paper_time_ratio"] == 2.19
    assert by["yahoo-small"]["paper_nll"] == 327.2 and by["yahoo-small"]["paper_table"] == "1+5"
    assert by["synthetic"]["paper_nll"] is None
    assert "89.05" in lagvae.format_table(rows)


def test_paper_data_sets_ptb_rows_beside_yelp_whatever_the_rule(tmp_path, capsys):
    dirs = [fake_run(tmp_path, "i10", data="ptb", mode="aggressive-inner10-adaptive"),
            fake_run(tmp_path, "e2", data="ptb", mode="basic+enclr2")]
    assert all(r["paper_nll"] is None for r in lagvae.summarize(lagvae.load_results(dirs)))
    by = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs), paper_data="yelp")}
    ref = lagvae.paper_results()
    assert by["aggressive-inner10-adaptive"]["paper_nll"] == float(ref[("yelp", "aggressive-inner10")]["nll"])
    assert by["basic+enclr2"]["paper_table"] == "10"
    assert lagvae.main(["table", "--paper-data", "yelp", *map(str, dirs)]) == 0
    assert ref[("yelp", "basic+enclr2")]["nll"] in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        lagvae.main(["table", "--paper-data", "ptb", str(dirs[0])])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--paper-data" in err[0]


def fake_trained_run(root, name, mode, kl):
    d = fake_run(root, name, mode=mode, kl=kl, mi=kl / 2, au=int(kl > 0.5))
    (d / "config.json").write_text(json.dumps({"mode": mode, "config": {}}))
    (d / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "val_mi": kl / 2 * e, "val_kl": kl * e, "seconds": 1.0}) + "\n"
                                         for e in (1, 2, 3)))
    g = np.random.default_rng(0)
    snaps = [{"iter": it, "model_mean": g.normal(size=50).tolist(), "inference_mean": g.normal(size=50).tolist()}
             for it in (0, 200, 0)]                         # a duplicate from a resume
    (d / "snapshots.jsonl").write_text("".join(json.dumps(s) + "\n" for s in snaps))
    return d


@pytest.mark.parametrize("kind", ["posterior", "dynamics", "nll-au"])
def test_figures_are_written(tmp_path, kind):
    from PIL import Image
    runs = [str(fake_trained_run(tmp_path, "b", "basic", 0.0)), str(fake_trained_run(tmp_path, "a", "aggressive", 1.2))]
    out = tmp_path / f"{kind}.png"
    assert lagvae.main(["figure", kind, *runs, "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert w > 300 and h > 200
    assert [s["iter"] for s in lagvae.load_snapshots(runs[0])] == [0, 200]


def test_runs_without_iw_nll_summarize_as_nan(tmp_path):
    d = fake_run(tmp_path, "r")
    r = json.loads((d / "result.json").read_text())
    del r["iw_nll"]
    (d / "result.json").write_text(json.dumps(r))
    row = lagvae.summarize(lagvae.load_results([d]))[0]
    assert np.isnan(row["iw_nll"]) and row["kl"] == 0.0


def test_by_run_rows_and_same_seed_time_ratio(tmp_path):
    dirs = [fake_run(tmp_path, "b0", seed=0, train_seconds=10.0), fake_run(tmp_path, "b1", seed=1, train_seconds=20.0),
            fake_run(tmp_path, "a1", mode="aggressive", seed=1, train_seconds=50.0)]
    rows = lagvae.summarize(lagvae.load_results(dirs), by_run=True)
    assert [(r["mode"], r["seeds"]) for r in rows] == [("aggressive", [1]), ("basic", [0]), ("basic", [1])]
    assert rows[0]["time_ratio"] == pytest.approx(2.5)          # against basic of the same seed


def test_epoch_columns_come_from_the_log(tmp_path):
    d = fake_run(tmp_path, "a", mode="aggressive")
    log = [{"epoch": 1, "aggressive": True, "seconds": 300.0}, {"epoch": 2, "aggressive": True, "seconds": 500.0},
           {"epoch": 3, "aggressive": False, "seconds": 6.0}, {"epoch": 4, "aggressive": False, "seconds": 4.0}]
    (d / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    row = lagvae.summarize(lagvae.load_results([d, fake_run(tmp_path, "b")]), by_run=True)[0]
    assert (row["agg_epochs"], row["agg_epoch_s"], row["epoch_s"]) == (2, 400.0, 5.0)
    full = lagvae.format_table([row], columns=lagvae.TABLE_COLUMNS)
    assert "| synthetic | aggressive | 0 | 1 | 1 | 0 | 40.00 | " in full
    assert "| 2 | 400.00 | 5.00 |" in full                  # agg_epochs a count, the seconds with decimals


def test_by_run_keeps_runs_of_one_seed_apart(tmp_path):
    dirs = [fake_run(tmp_path, "b12", train_seconds=10.0), fake_run(tmp_path, "b30", train_seconds=30.0, iw_nll=39.0),
            fake_run(tmp_path, "a12", mode="aggressive", train_seconds=50.0)]
    rows = lagvae.summarize(lagvae.load_results(dirs), by_run=True)
    assert sorted((r["mode"], r["iw_nll"]) for r in rows) == [("aggressive", 40.0), ("basic", 39.0), ("basic", 40.0)]
    agg = next(r for r in rows if r["mode"] == "aggressive")
    assert agg["time_ratio"] is None                    # two basic runs of seed 0: no single reference
    assert f"| {tmp_path / 'b30'} | synthetic | basic |" in lagvae.format_table(rows)


# ------------------------------------------------------------------------------------------------
# Issue 12: run files with missing fields or wrong types are one line and exit 2

def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lagvae: error: "), err
    return err[0]


def edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def drop(key):
    return lambda r: {k: v for k, v in r.items() if k != key}


def put(key, value):
    return lambda r: {**r, key: value}


# What is read must be there, of its type (a finite number, an integer seed, a text name).
@pytest.mark.parametrize("edit,needle", [
    (lambda r: [r], "result.json: [{"),
    (lambda r: [r], "is not a JSON object"),
    (drop("mode"), "result.json: no 'mode' (a result.json of `train` holds data, mode, seed, au, mi)"),
    (drop("au"), "result.json: no 'au'"),
    (drop("seed"), "result.json: no 'seed'"),
    (drop("data"), "result.json: no 'data'"),
    (put("seed", "0"), "result.json: 'seed' is '0', expected an integer"),
    (put("seed", 1.5), "result.json: 'seed' is 1.5, expected an integer"),
    (put("mode", None), "result.json: 'mode' is None, expected text"),
    (put("au", "x"), "result.json: 'au' is 'x', expected a number"),
    (put("iw_nll", "abc"), "'iw_nll' is 'abc', expected a number"),
    (put("iw_nll", [1.0]), "'iw_nll' is [1.0], expected a number"),
    (put("mi", True), "'mi' is True, expected a number"),
])
def test_table_refuses_bad_result_files(tmp_path, capsys, edit, needle):
    d = fake_run(tmp_path, "r")
    edit_json(d / "result.json", edit)
    assert lagvae.main(["table", str(d)]) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("log,needle", [
    ('{"epoch": 1}\n', "log.jsonl: no 'seconds' (a training log holds the seconds of each epoch)"),
    ('{"epoch": 1, "seconds": 2}\n{"seconds": "x"}\n', "log.jsonl: 'seconds' is 'x', expected a number"),
    ('[1, 2]\n', "log.jsonl:1: [1, 2] is not a JSON object"),
    ('{"seconds": 1\n', "log.jsonl:1: not JSON ("),
])
def test_table_refuses_bad_logs(tmp_path, capsys, log, needle):
    d = fake_run(tmp_path, "r")
    (d / "log.jsonl").write_text(log)
    assert lagvae.main(["table", str(d)]) == 2
    assert needle in one_error_line(capsys)


def test_no_time_ratio_against_a_zero_second_basic_run(tmp_path):
    rows = lagvae.summarize(lagvae.load_results([fake_run(tmp_path, "b", train_seconds=0.0),
                                                 fake_run(tmp_path, "a", mode="aggressive")]))
    assert [r["time_ratio"] for r in rows] == [None, None]


@pytest.mark.parametrize("kind,file,content,needle", [
    ("dynamics", "log.jsonl", '{"epoch": 1, "val_kl": 1.0}\n', "log.jsonl: no 'val_mi'"),
    ("dynamics", "log.jsonl", '{"epoch": 1, "val_kl": 1.0, "val_mi": null}\n', "'val_mi' is None, expected a number"),
    ("dynamics", "config.json", '["basic"]', "config.json: list indices must be integers"),
    ("dynamics", "config.json", '{"config": {}}', "config.json: no 'mode' (a run's config.json holds its mode)"),
    ("posterior", "snapshots.jsonl", "", "snapshots.jsonl: no records"),
    ("posterior", "snapshots.jsonl", '{"model_mean": [1], "inference_mean": [1]}\n',
     "snapshots.jsonl: no 'iter' (a snapshot holds its iter)"),
    ("posterior", "snapshots.jsonl", '{"iter": 0, "model_mean": [], "inference_mean": []}\n',
     "record 1 has 0 model means and 0 inference means"),
    ("posterior", "snapshots.jsonl", '{"iter": 0, "model_mean": [1, "a"], "inference_mean": [1, 2]}\n',
     "could not convert string to float: 'a'"),
    ("posterior", "snapshots.jsonl", '{"iter": 0, "model_mean": [1, 2], "inference_mean": [1]}\n',
     "record 1 has 2 model means and 1 inference means"),
    ("trajectory", "trajectory.jsonl", '{"step": "init", "inference_mean": [0.5]}\n',
     "trajectory.jsonl: no 'model_mean'"),
    ("nll-au", "result.json", json.dumps({"data": "synthetic", "mode": "basic", "seed": 0, "au": 0, "mi": 0.0}),
     "result.json: no 'iw_nll'"),
])
def test_figures_refuse_bad_run_files(tmp_path, capsys, kind, file, content, needle):
    runs = [str(fake_trained_run(tmp_path, "b", "basic", 0.0)), str(fake_trained_run(tmp_path, "a", "aggressive", 1.2))]
    (tmp_path / "b" / file).write_text(content)          # the first run read
    assert lagvae.main(["figure", kind, *runs, "--out", str(tmp_path / "f.png")]) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "f.png").exists()


def paired_grid(root, diffs, data="ptb", a="basic", b="aggressive", base=90.0):
    """Runs of modes a and b for seeds 0..n-1 whose IW-NLL differs by diffs[s] (b - a) and KL by 1."""
    dirs = []
    for s, d in enumerate(diffs):
        dirs.append(fake_run(root, f"{a}-s{s}", data=data, mode=a, seed=s, iw_nll=base + s, kl=0.0, au=0))
        dirs.append(fake_run(root, f"{b}-s{s}", data=data, mode=b, seed=s, iw_nll=base + s + d, kl=1.0, au=3))
    return dirs


def test_paired_differences_mean_sd_t_interval_and_signs(tmp_path):
    from scipy import stats
    diffs = [-0.5, 0.25, -0.25, -1.0, 0.0]
    rows = {r["metric"]: r for r in lagvae.paired(lagvae.load_results(paired_grid(tmp_path, diffs)),
                                                   "basic", "aggressive")}
    nll = rows["iw_nll"]
    assert nll["seeds"] == [0, 1, 2, 3, 4] and nll["diffs"] == pytest.approx(diffs)
    assert nll["mean"] == pytest.approx(-0.3) and nll["sd"] == pytest.approx(np.std(diffs, ddof=1))
    half = stats.t.ppf(0.975, 4) * np.std(diffs, ddof=1) / 5 ** 0.5       # 2.776 sd / sqrt(n)
    assert (nll["ci_low"], nll["ci_high"]) == pytest.approx((-0.3 - half, -0.3 + half))
    assert (nll["b_lower"], nll["b_higher"]) == (3, 1)                    # the tie counts for neither
    assert nll["verdict"] == "undecided" and nll["paper"] is None         # ptb: no paper row
    kl = rows["kl"]
    assert kl["mean"] == 1.0 and kl["sd"] == 0.0 and kl["verdict"] == "B higher"
    assert rows["au"]["mean"] == 3.0


def test_paired_sets_the_papers_difference_beside_without_testing_it(tmp_path):
    dirs = paired_grid(tmp_path, [-0.1, -0.2, -0.15, -0.12], data="yahoo-small")
    rows = {r["metric"]: r for r in lagvae.paired(lagvae.load_results(dirs), "basic", "aggressive")}
    nll = rows["iw_nll"]
    assert nll["paper_data"] == "yahoo" and nll["paper"] == pytest.approx(328.2 - 329.0)    # Table 1: Ours - VAE
    assert nll["ci_high"] < 0 and nll["verdict"] == "B lower"
    assert rows["kl"]["paper"] == pytest.approx(5.6)
    yelp = {r["metric"]: r for r in lagvae.paired(lagvae.load_results(dirs), "basic", "aggressive", "yelp")}
    assert yelp["iw_nll"]["paper"] == pytest.approx(356.9 - 358.3)


def test_paired_leaves_out_an_unpaired_seed_and_refuses_a_duplicate_or_a_missing_mode(tmp_path, capsys):
    dirs = paired_grid(tmp_path, [1.0, 2.0, 3.0])
    dirs.append(fake_run(tmp_path, "basic-s7", data="ptb", mode="basic", seed=7))
    rows = lagvae.paired(lagvae.load_results(dirs), "basic", "aggressive")
    assert rows[0]["seeds"] == [0, 1, 2] and rows[0]["mean"] == pytest.approx(2.0)
    assert "ptb seed 7: only basic has finished" in capsys.readouterr().err
    dup = fake_run(tmp_path, "again", data="ptb", mode="basic", seed=0)
    with pytest.raises(lagvae.UsageError, match="two runs of ptb basic seed 0"):
        lagvae.paired(lagvae.load_results(dirs + [dup]), "basic", "aggressive")
    with pytest.raises(lagvae.UsageError, match="no run of mode 'lm'"):
        lagvae.paired(lagvae.load_results(dirs), "lm", "aggressive")


def test_table_paired_cli_markdown_and_csv(tmp_path, capsys):
    dirs = [str(d) for d in paired_grid(tmp_path, [-0.5, -0.3, -0.4], data="yahoo-small")]
    assert lagvae.main(["table", "--paired", "basic", "aggressive", *dirs]) == 0
    md = capsys.readouterr().out
    assert "| yahoo-small | aggressive − basic | iw_nll | 3 | -0.50 -0.30 -0.40 | -0.40 | 0.10 |" in md
    assert "-0.80 (yahoo) | B lower |" in md
    assert lagvae.main(["table", "--paired", "basic", "aggressive", "--format", "csv", *dirs]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("data,a,b,metric,n,seeds,diffs,mean,sd,ci_low,ci_high")
    assert csv[1].startswith("yahoo-small,basic,aggressive,iw_nll,3,0 1 2,-0.5 -0.3 -0.4,-0.4000,0.1000,")
    assert lagvae.main(["table", "--paired", "basic", "aggressive", "--by-run", *dirs]) == 2
    assert "drop --by-run" in capsys.readouterr().err


def test_paper_table_picks_the_row_of_that_table_where_a_mode_has_several(tmp_path, capsys):
    """Ours has a row in Table 1 (Yelp 356.9) and Table 4's convergence row (357.0, 21.44 hours);
    the basic VAE's Table 10 row is 358.2 against Table 1's 358.3."""
    dirs = [fake_run(tmp_path, "a", data="ptb", mode="aggressive"), fake_run(tmp_path, "b", data="ptb", mode="basic")]
    rows = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs), paper_data="yelp")}
    assert (rows["aggressive"]["paper_nll"], rows["basic"]["paper_nll"]) == (356.9, 358.3)
    t4 = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs), paper_data="yelp", paper_table="4")}
    assert (t4["aggressive"]["paper_nll"], t4["aggressive"]["paper_hours"], t4["aggressive"]["paper_table"]) == \
        (357.0, 21.44, "4")
    t10 = {r["mode"]: r for r in lagvae.summarize(lagvae.load_results(dirs), paper_data="yelp", paper_table="10")}
    assert t10["basic"]["paper_nll"] == 358.2 and t10["aggressive"]["paper_nll"] is None
    assert lagvae.main(["table", "--paper-data", "yelp", "--paper-table", "4", "--all", *map(str, dirs)]) == 0
    assert "21.44" in capsys.readouterr().out


def test_figure_titles_name_the_dataset(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"config": {"data": "ptb"}, "mode": "aggressive+anneal"}))
    assert lagvae.run_mode(d) == "ptb: aggressive+anneal"


def test_tables_are_compact_by_default_with_counts_as_integers(tmp_path, capsys):
    dirs = [fake_run(tmp_path, f"a{s}", mode="aggressive", seed=s, au=3, steps=1000 + s, kl=1.0, mi=0.6) for s in (0, 1)]
    assert lagvae.main(["table", *map(str, dirs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("| data | mode | seeds | runs | collapsed | escaped | iw_nll | elbo | kl | mi | au | steps | "
                      "step_ratio | paper_table | paper_nll | paper_kl | paper_mi | paper_au |")
    assert "| 3 (0) | 1000.50 (0.71) |" in out[2]             # AU whole in every seed: no decimals
    assert lagvae.main(["table", "--columns", "iw_nll,au", *map(str, dirs)]) == 0
    assert "| escaped | iw_nll | au | step_ratio |" in capsys.readouterr().out
    assert lagvae.main(["table", "--columns", "nll", *map(str, dirs)]) == 2
    assert "--columns: unknown nll" in capsys.readouterr().err
    assert lagvae.main(["table", "--all", *map(str, dirs)]) == 0
    assert "| train_seconds |" in capsys.readouterr().out


def spread_file(path, data, mode, mean, var, n=10):
    path.write_text(json.dumps({"data": data, "mode": mode, "seed": 0, "eval_seeds": n, "iw_samples": 50,
                                "mean": dict(zip(lagvae.SPREAD_METRICS, mean)),
                                "var": dict(zip(lagvae.SPREAD_METRICS, var)), "per_seed": []}))
    return str(path)


def test_table_spread_renders_tables_7_and_8_beside_the_papers_rows(tmp_path, capsys):
    """App. D: mean (variance) over evaluation seeds, Ours as Table 7 and the VAE as Table 8, each
    followed by the paper's row on the stand-in dataset (yahoo-small -> Yahoo; ptb has none)."""
    files = [spread_file(tmp_path / "a.json", "yahoo-small", "aggressive", [132.5, 133.0, 0.9, 0.7, 6.0],
                         [3e-5, 1e-3, 0.0, 2e-3, 0.0]),
             spread_file(tmp_path / "b.json", "ptb", "basic", [92.67, 92.8, 0.002, 0.02, 0.0], [1e-5, 2e-4, 0, 0, 0])]
    assert lagvae.main(["table", "--spread", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| yahoo-small | Ours (Table 7) | 10 | 132.500 (3.0e-05) | 133.000 (1.0e-03) | 0.900 (0.0e+00) "
                        "| 0.700 (2.0e-03) | 6 (0) |")
    assert lines[3] == "| yahoo (paper) | Ours (Table 7) | 10 | 327.98 (1e-05) | 329.54 (5e-04) | 5.35 (0) | 3.01 (0.002) | 8 (0) |"
    assert lines[4].startswith("| ptb | VAE (Table 8) | 10 | 92.670 (1.0e-05) |") and len(lines) == 5
    assert lagvae.main(["table", "--spread", "--paper-data", "omniglot", files[1]]) == 0
    assert capsys.readouterr().out.splitlines()[3] == \
        "| omniglot (paper) | VAE (Table 8) | 10 | 89.41 (0) | 89.66 (2e-04) | 1.48 (0) | 1.39 (6e-04) | 3 (0) |"
    edit_json(tmp_path / "a.json", drop("var"))
    assert lagvae.main(["table", "--spread", files[0]]) == 2
    assert one_error_line(capsys).endswith("a.json: no 'var' (the JSON of `eval --eval-seeds N`)")
    assert lagvae.main(["table", "--spread", str(tmp_path / "none.json")]) == 2
    assert one_error_line(capsys).endswith("none.json: No such file or directory (the JSON of `eval --eval-seeds N`)")


def bound_file(path, mode, seed, means, exact=False, n=500):
    ks = [1] if exact else [1, 50, 500, 5000]
    path.write_text(json.dumps({"data": "ptb", "mode": mode, "seed": seed, "n": n, "eval_seeds": 2, "exact": exact,
                                "bound": {str(k): {"mean": m, "sd": 0.01 * i, "groups": 10000 // k}
                                          for i, (k, m) in enumerate(zip(ks, means))}}))
    return str(path)


def test_the_bound_table_sets_each_model_beside_its_seeds_exact_lm(tmp_path, capsys):
    files = [bound_file(tmp_path / "a.json", "aggressive", 0, [95.0, 93.0, 92.6, 92.5]),
             bound_file(tmp_path / "b.json", "basic", 1, [93.5, 93.1, 93.0, 92.95]),
             bound_file(tmp_path / "l0.json", "lm", 0, [91.5], exact=True),
             bound_file(tmp_path / "l1.json", "lm", 1, [91.0], exact=True),
             bound_file(tmp_path / "other.json", "lm", 0, [10.0], exact=True, n=100)]   # other documents: not its
    assert lagvae.main(["table", "--bound", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| data | model | seed | documents | K = 1 | K = 50 | K = 500 | K = 5000 | LM (exact) | "
                        "K = 5000 − LM |")
    assert lines[2] == "| ptb | aggressive | 0 | 500 | 95.00 ± 0.00 | 93.00 ± 0.01 | 92.60 ± 0.02 | 92.50 ± 0.03 | 91.50 | +1.00 |"
    assert lines[3].startswith("| ptb | basic | 1 |") and lines[3].endswith("| 91.00 | +1.95 |") and len(lines) == 4
    assert lagvae.main(["figure", "bound", *files[:4], "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 0
    (tmp_path / "bad.json").write_text(json.dumps({"data": "ptb", "mode": "basic", "seed": 0, "n": 5, "exact": False,
                                                   "bound": {"50": {"mean": "x", "sd": 0, "groups": 1}}}))
    assert lagvae.main(["table", "--bound", str(tmp_path / "bad.json")]) == 2
    assert one_error_line(capsys).endswith("bad.json: 'mean' is 'x', expected a number (the JSON of `eval --bound`)")



def configured_run(root, name, seed=0, **config):
    d = fake_run(root, name, seed=seed)
    base = lagvae.asdict(lagvae.resolve_config({"preset": "tiny", "seed": seed}))
    (d / "config.json").write_text(json.dumps({"config": {**base, **config}}))
    return d


def test_table_pools_only_runs_whose_settings_agree_and_says_what_differs(tmp_path, capsys):
    dirs = [configured_run(tmp_path, "a0", 0, out="x", threads=4, device="cpu"),
            configured_run(tmp_path, "a1", 1, out="y", quiet=True, data_dir="/d"),
            configured_run(tmp_path, "short", 0, epochs=12)]
    (tmp_path / "evalseeds-synthetic.json").write_text("{}")          # a record beside the runs
    capsys.readouterr()
    assert lagvae.main(["table", *map(str, dirs), str(tmp_path / "evalseeds-synthetic.json")]) == 0
    out, err = capsys.readouterr()
    assert "evalseeds-synthetic.json: a file, not a run directory, left out" in err
    rows = {r["differs"]: r for r in lagvae.summarize(lagvae.load_results(dirs))}
    assert rows.keys() == {"epochs=2", "epochs=12"}
    assert (rows["epochs=2"]["seeds"], rows["epochs=12"]["seeds"]) == ([0, 1], [0])
    assert "| synthetic | basic | epochs=12 | 0 | 1 |" in out
