"""Sections 8 and 10: the report. Verdicts by one rule (Holm over a paper table's claims), and
RESULTS.md's blocks rewritten from the records their commands name."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats

import lagvae
from test_analysis import fake_run, paired_grid

ROOT = Path(__file__).resolve().parents[1]


def decided(ps):
    return [p <= 0.05 for p in lagvae.holm(ps)]


def test_holm_steps_down_and_stops_at_the_first_kept_hypothesis():
    # sorted: 0.005 <= .05/4, 0.01 <= .05/3, 0.03 > .05/2: stop, so 0.04 stays too
    assert decided([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert lagvae.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert decided([0.04]) == [True] and decided([0.06]) == [False]
    assert decided([0.03, 0.03]) == [False, False]          # the smaller must be <= .05/2
    assert decided([0.024, 0.049]) == [True, True]          # .024 <= .05/2, then .049 <= .05/1
    assert lagvae.holm([0.9, 0.8]) == [1.0, 1.0]            # capped at 1


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_and_never_laxer_than_bonferroni_nor_stricter_than_it_needs(ps):
    adjusted = lagvae.holm(ps)
    for i, p in enumerate(ps):
        assert p <= adjusted[i] <= min(1.0, len(ps) * p) + 1e-12        # between no correction and Bonferroni
        assert all(adjusted[j] <= adjusted[i] for j, q in enumerate(ps) if q < p)


def claims_file(tmp_path, rows):
    path = tmp_path / "claims.csv"
    head = ",".join(lagvae.CLAIM_FIELDS)
    path.write_text("\n".join([head, *(",".join(r) for r in rows)]) + "\n")
    return path


def verdicts(path):
    lines = lagvae.format_claims(path).splitlines()[2:]
    return [line.split(" | ")[5] for line in lines]


def test_a_claim_is_yes_no_or_undecided_by_the_direction_of_its_paired_interval(tmp_path):
    for name, diffs in (("lower", [-0.5, -0.6, -0.4, -0.55, -0.45]), ("higher", [0.5, 0.6, 0.4, 0.55, 0.45]),
                        ("noisy", [-0.5, 0.6, -0.4, 0.55, -0.1])):
        (tmp_path / name).mkdir()
        paired_grid(tmp_path / name, diffs)
    rows = [["T", f"claim {d}", "paired", f"{tmp_path / d}/*/", "basic", "aggressive", "iw_nll", "<", "yahoo", "S"]
            for d in ("lower", "higher", "noisy")]
    # three families of one claim each: no correction between them
    for r, t in zip(rows, ("T1", "T2", "T3")):
        r[0] = t
    assert verdicts(claims_file(tmp_path, rows)) == ["yes", "no", "undecided"]
    table = lagvae.format_claims(claims_file(tmp_path, rows[:1]))
    d = np.array([-0.5, -0.6, -0.4, -0.55, -0.45])
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / 5 ** 0.5
    assert f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}], 5 seeds" in table
    assert "| -0.80 (yahoo) |" in table          # the paper's Ours - VAE on Yahoo, set beside, not tested


def test_holm_over_a_table_can_leave_a_claim_undecided_that_alone_would_be_decided(tmp_path):
    # p of one claim alone just under .05; beside a second claim with p just under .05 too, Holm asks
    # .025 of the smaller: both undecided
    diffs = [-0.3, 0.1, -0.5, -0.2, -0.35, 0.05, -0.4, -0.1]
    p = stats.ttest_1samp(diffs, 0).pvalue
    assert 0.025 < p < 0.05
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        paired_grid(tmp_path / d, diffs)
    row = lambda d, t: [t, f"claim {d}", "paired", f"{tmp_path / d}/*/", "basic", "aggressive", "iw_nll", "<",
                        "yahoo", "S"]
    assert verdicts(claims_file(tmp_path, [row("a", "T")])) == ["yes"]
    assert verdicts(claims_file(tmp_path, [row("a", "T"), row("b", "T")])) == ["undecided", "undecided"]
    assert verdicts(claims_file(tmp_path, [row("a", "T"), row("b", "U")])) == ["yes", "yes"]


def test_a_count_claim_tests_half_of_the_runs_and_a_claim_without_runs_says_so(tmp_path):
    for s in range(10):
        fake_run(tmp_path, f"basic-s{s}", data="ptb", seed=s)                       # AU 0, MI 0: collapsed
    for s in range(3):
        fake_run(tmp_path, f"aggressive-s{s}", data="ptb", mode="aggressive", seed=s, kl=1.0, mi=0.8, au=3)
    rows = [["T", "ten collapse", "count", f"{tmp_path}/basic-s*/", "basic", "basic", "collapsed", ">", "yahoo", "S"],
            ["U", "three escape", "count", f"{tmp_path}/aggressive-s*/", "aggressive", "aggressive", "escaped", ">",
             "yahoo", "S"],
            ["V", "none escape", "count", f"{tmp_path}/basic-s*/", "basic", "basic", "escaped", ">", "yahoo", "S"],
            ["W", "not run", "count", f"{tmp_path}/nothing-*/", "basic", "basic", "escaped", ">", "yahoo", "S"]]
    table = lagvae.format_claims(claims_file(tmp_path, rows))
    # 10 of 10: p = 2 / 2^10; 3 of 3: no outcome of 3 runs reaches 5 % (2 / 2^3); 0 of 10 against the claim: no
    assert verdicts(claims_file(tmp_path, rows)) == ["yes", "too few runs to test", "no", "not run"]
    assert "10 of 10 collapsed" in table and "3 of 3 escaped" in table and "no finished run yet" in table
    assert "KL 0.0, AU 0.0 (yahoo)" in table                                    # the paper's VAE on Yahoo


def test_a_claim_of_one_seed_or_one_unfinished_mode_is_no_test_and_the_same_shift_every_seed_is(tmp_path):
    (tmp_path / "one").mkdir()
    paired_grid(tmp_path / "one", [-0.5])
    (tmp_path / "same").mkdir()
    paired_grid(tmp_path / "same", [1.0, 1.0, 1.0])            # KL: +1 in every seed, sd 0
    (tmp_path / "half").mkdir()
    fake_run(tmp_path / "half", "basic-s0", data="ptb")
    row = lambda d, m="iw_nll", t="T": [t, d, "paired", f"{tmp_path / d}/*/", "basic", "aggressive", m, "<",
                                         "yahoo", "S"]
    rows = [row("one"), row("half", t="U"), row("same", "kl", "V")]
    rows[2][7] = ">"
    assert verdicts(claims_file(tmp_path, rows)) == ["too few runs to test", "not run", "yes"]


@pytest.mark.parametrize("field,value,needle", [("kind", "pairs", "kind 'pairs'"), ("metric", "colapsed", "metric 'colapsed'"),
                                               ("direction", "<=", "direction '<='")])
def test_a_claim_that_names_no_test_is_one_line_naming_its_row(tmp_path, capsys, field, value, needle):
    claim = dict(zip(lagvae.CLAIM_FIELDS, ["T", "c", "count", f"{tmp_path}/*/", "basic", "basic", "collapsed", ">",
                                          "yahoo", "S"]))
    claim[field] = value
    path = claims_file(tmp_path, [list(claim.values())])
    assert lagvae.main(["table", "--claims", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"claims.csv:2: {needle}" in err[0]


def test_report_rewrites_its_blocks_and_check_refuses_a_stale_digit_or_an_untraced_number(tmp_path, monkeypatch):
    paired_grid(tmp_path, [-0.5, -0.3, -0.4])
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "R.md"
    doc.write_text("# R\nThe paper's VAE: 329.0.\n<!-- lagvae.py table --paired basic aggressive *-s*/ -->\n"
                   "stale\n<!-- end -->\nAfter.\n")
    with pytest.raises(lagvae.UsageError, match="1 block"):
        lagvae.report(str(doc), check=True)
    assert lagvae.main(["report", str(doc)]) == 0
    text = doc.read_text()
    assert "| ptb | aggressive − basic | iw_nll | 3 | -0.50 -0.30 -0.40 | -0.40 |" in text
    assert text.startswith("# R\nThe paper's VAE: 329.0.\n") and text.endswith("<!-- end -->\nAfter.\n")
    lagvae.report(str(doc), check=True)
    assert lagvae.main(["report", str(doc)]) == 0 and doc.read_text() == text       # idempotent
    doc.write_text(text.replace("-0.40 |", "-0.41 |", 1))
    assert lagvae.main(["report", "--check", str(doc)]) == 2
    doc.write_text(text.replace("After.", "After: -0.40 and 0.123, `1.5` (torch 2.1.0), [x](#a-0.7)."))
    with pytest.raises(lagvae.UsageError, match=r"hold: 0\.123$"):          # code, versions and links aside
        lagvae.report(str(doc), check=True)
    unclosed = text.replace("<!-- end -->\nAfter.", "After.\n" + text[text.index("<!-- lagvae"):])
    doc.write_text(unclosed)                 # the first block's end is gone: refused, nothing swallowed
    with pytest.raises(lagvae.UsageError, match="2 block heads, 1 ends"):
        lagvae.report(str(doc))
    assert doc.read_text() == unclosed
    for command, needle in (("table --nope *-s*/", "is not a table command"), ("table nothing-*/", "matches nothing")):
        doc.write_text(f"<!-- lagvae.py {command} -->\n<!-- end -->\n")
        assert lagvae.main(["report", str(doc)]) == 2


def test_results_md_tables_are_what_their_records_make(monkeypatch):
    """Every block of RESULTS.md against runs/: an edited digit of a table fails here."""
    monkeypatch.chdir(ROOT)
    text = (ROOT / "RESULTS.md").read_text()
    assert len(lagvae.REPORT_BLOCK.findall(text)) >= 20
    new = lagvae.REPORT_BLOCK.sub(lambda m: "", text)
    assert "<!-- lagvae.py table" not in new.replace("<!-- end -->", "")       # every block is closed
    monkeypatch.setattr(lagvae, "untraced_numbers", lambda text: [])
    lagvae.report("RESULTS.md", check=True)


def test_results_md_prose_cites_only_numbers_of_its_tables_or_the_paper():
    """A number typed into RESULTS.md's prose that no table and no row of the paper holds fails here."""
    assert lagvae.untraced_numbers((ROOT / "RESULTS.md").read_text()) == []
