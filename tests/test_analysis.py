"""Section 6: tables from run directories."""
import json

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
    assert "| synthetic | aggressive | 2 | 1 | 1 | 38.50 (0.71) |" in md
    csv = lagvae.format_table(list(rows.values()), "csv").splitlines()
    assert len(csv) == 3 and csv[0].startswith("data,mode,runs")


def test_table_cli_rejects_a_directory_without_results(tmp_path, capsys):
    assert lagvae.main(["table", str(tmp_path)]) == 2
    assert "result.json" in capsys.readouterr().err
