"""tools/: the developer tools beside lagvae.py."""
import json
import sys
from pathlib import Path

import pytest

import lagvae

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench_compare  # noqa: E402


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


@pytest.mark.slow
def test_bench_compare_times_every_kind_and_a_baseline(data_env, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_compare.main(["--preset", "tiny", "--steps", "2", "--rounds", "1", "--baseline", str(ROOT),
                               "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    result = json.loads(out.read_text())
    assert json.loads(printed[-1]) == result and "inner / joint" in printed[-2]
    assert "| speedup |" in printed[1]
    kinds = [(r["version"], r["kind"]) for r in result["rows"]]
    assert kinds == [(v, k) for v in ("current", "baseline") for k in lagvae.BENCH_KINDS]
    assert all(r["ms"] > 0 and r["examples_per_s"] > 0 and r["speedup"] > 0 for r in result["rows"])
    assert result["inner_over_joint"] > 0 and result["savae_over_basic"] > 0
    assert bench_compare.main(["--preset", "tiny", "--baseline", str(tmp_path)]) == 2
    one_line_error(capsys, "--baseline")


@pytest.mark.slow
def test_bench_compare_profile_lists_the_costliest_ops_of_each_kind(data_env, capsys):
    assert bench_compare.main(["--preset", "tiny", "--steps", "1", "--rounds", "1", "--baseline", str(ROOT),
                               "--profile", "10000"]) == 0
    printed = capsys.readouterr().out
    profile = json.loads(printed.splitlines()[-1])["profile"]
    assert list(profile) == list(lagvae.BENCH_KINDS)
    for ops in profile.values():                  # every operator: sorted, shares of the whole
        ms = [o["ms"] for o in ops]
        assert ms == sorted(ms, reverse=True) and sum(o["share"] for o in ops) == pytest.approx(1)
    # SA-VAE differentiates through its refinement: many more operator calls than a joint step
    calls = lambda kind: sum(o["calls"] for o in profile[kind])
    assert calls("savae") > 5 * calls("joint")
    assert "| kind | op | calls per call | ms per call | share of self time |" in printed
    assert f"| savae | {profile['savae'][0]['op']} |" in printed
    with pytest.raises(SystemExit) as e:
        bench_compare.main(["--preset", "tiny", "--baseline", str(ROOT), "--profile", "-1"])
    assert e.value.code == 2 and "--profile" in one_line_error(capsys, "positive")


def test_bench_compare_passes_the_bench_flags_on_and_refuses_others(capsys):
    with pytest.raises(SystemExit) as e:
        bench_compare.main(["--baseline", str(ROOT), "--steps", "0"])
    assert e.value.code == 2 and "--steps" in one_line_error(capsys)
    with pytest.raises(SystemExit) as e:
        bench_compare.main(["--steps", "2"])
    assert e.value.code == 2 and "--baseline" in one_line_error(capsys)
