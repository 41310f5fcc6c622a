"""Sections 4 and 7: a model that stands alone: its vocabulary travels with it, other data is
refused or named, a researcher's own corpus is not cut, and a run says what it does."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lagvae

ROOT = Path(__file__).resolve().parents[1]


def corpus(root, name, train, valid=None, test=None):
    """A text:PREFIX corpus under root; returns its --data value."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", train), ("valid", valid or train[:20]), ("test", test or train[20:40])):
        (root / f"{name}.{split}.txt").write_text("\n".join(lines) + "\n")
    return f"text:{root / name}"


def sentences(n, seed=0, words=30):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, words, (int(torch.randint(3, 9, (1,), generator=g)),),
                                                         generator=g)) for _ in range(n)]


def train(data, out, *flags):
    assert lagvae.main(["train", "--data", data, "--preset", "tiny", "--epochs", "1", "--quiet", "--iw-samples", "5",
                        "--out", str(out), *flags]) == 0


def test_eval_refuses_a_corpus_whose_words_have_other_ids(tmp_path, capsys):
    """The same words in another order of first use get other ids: evaluating on them once gave a
    confident, wrong IW-NLL."""
    lines = sentences(200)
    data = corpus(tmp_path / "a", "c", lines)
    train(data, tmp_path / "run")
    reordered = corpus(tmp_path / "b", "c", lines[::-1], valid=lines[:20], test=lines[20:40])
    ck = str(tmp_path / "run" / "model.pt")
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", ck, "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["test_data"] == "as trained"
    # the run's config names corpus a; point it at b by moving b into a's place
    (tmp_path / "a" / "c.train.txt").write_text((tmp_path / "b" / "c.train.txt").read_text())
    assert reordered.endswith("/c")
    assert lagvae.main(["eval", "--ckpt", ck, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its vocabulary is not the one" in err[0] and "id " in err[0]


def test_eval_on_another_test_set_says_so_in_the_output_and_result(tmp_path, capsys):
    lines = sentences(200)
    data = corpus(tmp_path / "a", "c", lines)
    train(data, tmp_path / "run")
    (tmp_path / "a" / "c.test.txt").write_text("\n".join(lines[100:120]) + "\n")     # same words, other documents
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(tmp_path / "run" / "model.pt"), "--quiet", "--update"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["test_data"] == "other than at training"
    assert "the test set is not the one" in err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["test_data"] == "other than at training"


def test_eval_test_scores_another_file_with_the_models_vocabulary_and_no_other_data(tmp_path, capsys):
    lines = sentences(200)
    data = corpus(tmp_path / "a", "c", lines)
    train(data, tmp_path / "run")
    ck = str(tmp_path / "run" / "model.pt")
    other = tmp_path / "other.txt"
    other.write_text("\n".join(lines[100:117]) + "\n")
    for split in ("train", "valid"):        # the model alone: its own test file and another one
        (tmp_path / "a" / f"c.{split}.txt").unlink()
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", ck, "--quiet", "--test", str(tmp_path / "a" / "c.test.txt")]) == 0
    own = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert own["test_data"] == "as trained" and own["iw_nll"] == saved["iw_nll"] and own["n"] == saved["n"]
    assert lagvae.main(["eval", "--ckpt", ck, "--quiet", "--test", str(other)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 17 and json.loads(out)["test_data"] == "other than at training"
    assert lagvae.main(["eval", "--ckpt", ck, "--test", str(other), "--update"]) == 2
    assert "--test: another test set" in capsys.readouterr().err


def test_a_relative_corpus_prefix_is_stored_absolute_so_eval_works_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    corpus(tmp_path / "corpora", "mine", sentences(200))
    assert lagvae.main(["train", "--data", "text:corpora/mine", "--preset", "tiny", "--epochs", "1", "--quiet",
                        "--iw-samples", "5"]) == 0
    run = tmp_path / "runs" / "text:mine-tiny-basic-s0"      # named by the corpus, not its path
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["data"] == f"text:{tmp_path / 'corpora' / 'mine'}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(run / "model.pt"), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["test_data"] == "as trained"


def test_blank_lines_are_counted_in_the_cut_line_and_encoded_rows_keep_their_line_numbers(tmp_path, capsys):
    lines = sentences(200)
    lines[3:3], lines[10:10] = ["", "  "], [""]          # three blank lines among the first dozen
    data = corpus(tmp_path / "a", "c", lines, valid=lines[20:40], test=["w1 w2", "", "w3"])
    capsys.readouterr()
    assert lagvae.main(["train", "--data", data, "--preset", "tiny", "--subset", "0", "--epochs", "1",
                        "--iw-samples", "5", "--out", str(tmp_path / "run")]) == 0
    cut = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cut:"))
    assert "blank lines skipped: 3 train, 0 valid, 1 test" in cut
    assert lagvae.main(["encode", "--ckpt", str(tmp_path / "run" / "model.pt"), "--split", "test",
                        "--out", str(tmp_path / "z.npz")]) == 0
    assert np.load(tmp_path / "z.npz")["line"].tolist() == [1, 3]
    assert lagvae.main(["encode", "--ckpt", str(tmp_path / "run" / "model.pt"), "--split", "train",
                        "--out", str(tmp_path / "z.npz")]) == 0
    assert np.load(tmp_path / "z.npz")["line"].tolist()[2:5] == [3, 6, 7]


def test_resume_refuses_other_training_data(tmp_path, capsys):
    lines = sentences(200)
    data = corpus(tmp_path / "a", "c", lines)
    train(data, tmp_path / "run", "--subset", "200")
    other = lines[:150] + lines[:50]                 # the same first uses of every word: only the data differs
    (tmp_path / "a" / "c.train.txt").write_text("\n".join(other) + "\n")
    assert lagvae.main(["train", "--data", data, "--preset", "tiny", "--epochs", "2", "--quiet", "--iw-samples", "5",
                        "--subset", "200", "--out", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the training data is not the one" in err[0]


def test_a_model_pt_of_another_format_version_is_refused_and_one_without_a_version_loads(tmp_path, capsys):
    """A model.pt of another version, or one without a version and of an older layout (before it
    carried its vocabulary), is refused in one line that names it and says what to do; one without a
    version but with every field of version 1 (the grid in flight, commit fcf27fc) evaluates as it did."""
    data = corpus(tmp_path / "a", "c", sentences(200))
    train(data, tmp_path / "run")
    ckpt = tmp_path / "run" / "model.pt"
    ck = torch.load(ckpt, weights_only=True)
    assert ck["version"] == lagvae.CHECKPOINT_VERSION
    capsys.readouterr()
    assert lagvae.main(["eval", "--ckpt", str(ckpt), "--quiet", "--iw-samples", "5"]) == 0
    versioned = json.loads(capsys.readouterr().out)
    unversioned = {k: v for k, v in ck.items() if k != "version"}
    for bad, says in (({**ck, "version": 0}, "format 0;"),
                      ({k: v for k, v in unversioned.items() if k not in ("vocab", "specials", "fingerprints")},
                       "format older, without a version;")):
        torch.save(bad, ckpt)
        assert lagvae.main(["eval", "--ckpt", str(ckpt), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0] == (f"lagvae: error: --ckpt {ckpt}: not a lagvae model checkpoint (checkpoint "
                                            f"{says} this lagvae reads version 1: evaluate it with the lagvae that "
                                            f"wrote it (its run's config.json names the git commit))")
        with pytest.raises(lagvae.UsageError, match="this lagvae reads version 1"):
            lagvae.load(ckpt)
    torch.save(unversioned, ckpt)
    assert lagvae.main(["eval", "--ckpt", str(ckpt), "--quiet", "--iw-samples", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == versioned
    assert lagvae.load(ckpt).epoch == 1


def test_a_vocabulary_that_differs_is_named_by_its_first_differing_id(tmp_path, capsys):
    data = corpus(tmp_path / "a", "c", sentences(200))
    train(data, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    ck["vocab"] = ck["vocab"][:6] + [ck["vocab"][7], ck["vocab"][6]] + ck["vocab"][8:]
    torch.save(ck, tmp_path / "run" / "model.pt")
    assert lagvae.main(["eval", "--ckpt", str(tmp_path / "run" / "model.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"(id 6: {ck['vocab'][6]!r} when trained, {ck['vocab'][7]!r} now)" in err


@pytest.mark.slow
def test_an_own_corpus_is_kept_whole_by_default_and_the_banner_says_so(tmp_path, capsys):
    """text:PREFIX has no cpu sizing of its own: the cpu-full preset keeps every document, word and
    token; the banner and the stop reason are in a non-TTY log."""
    lines = [s + " " + " ".join(["pad"] * 40) for s in sentences(300, words=3000)]
    data = corpus(tmp_path / "a", "c", lines)
    cfg = lagvae.resolve_config({"data": data})
    assert cfg.preset == "cpu-full" and (cfg.subset, cfg.max_vocab, cfg.max_len, cfg.max_test) == (0, 0, 0, 0)
    assert cfg.iw_samples == 500 and cfg.nz == 32
    assert lagvae.resolve_config({"data": "ptb"}).subset == 4000          # the corpora it was sized for
    capsys.readouterr()
    assert lagvae.main(["train", "--data", data, "--epochs", "1", "--ni", "8", "--enc-nh", "8", "--dec-nh", "8",
                        "--nz", "2", "--iw-samples", "2", "--out", str(tmp_path / "run")]) == 0
    lines_out = capsys.readouterr().out.splitlines()     # captured: not a terminal, as in a log
    assert lines_out[0].startswith(f"run {tmp_path / 'run'} | cpu") and "--preset cpu-full" in lines_out[0]
    assert lines_out[1].startswith(f"data {data}: train 300 / valid 20 / test 20 documents")
    assert "documents of any length" in lines_out[1]
    assert lines_out[2] == "cut: IW-NLL with 2 samples, the paper 500 (--iw-samples 2)"
    assert any(line.startswith("training ended after the budget of 1 epochs (--epochs)") for line in lines_out)


def test_the_banner_names_each_cut_and_the_flag_or_preset_behind_it(data_env, tmp_path, capsys):
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "1", "--max-len", "5", "--max-vocab", "20",
                        "--iw-samples", "5", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    cut = next(line for line in out if line.startswith("cut: "))
    assert "train 64 of 2,000 documents (--subset 64 from --preset tiny)" in cut
    assert "vocabulary 20 of " in cut and "(--max-vocab 20)" in cut
    assert "cut to 5 tokens (--max-len 5)" in cut
    assert lagvae.main(["train", "--preset", "tiny", "--epochs", "2", "--iw-samples", "5", "--max-len", "5",
                        "--max-vocab", "20", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resuming from the end of epoch 1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_directory_copied_alone_encodes_and_reconstructs_new_text_without_data(tmp_path, monkeypatch, capsys):
    """The issue's acceptance: a model trained on text:PREFIX in one directory, its run directory
    copied alone to another place where the corpus is gone; samples, samples --reconstruct and
    encode --input work there. Literal control tokens and a byte-order mark are text, not control."""
    import io
    import shutil
    lines = sentences(200)
    data = corpus(tmp_path / "a", "c", lines)
    train(data, tmp_path / "run")
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tmp_path / "run", moved)
    shutil.rmtree(tmp_path / "a")                              # the corpus is gone
    new = tmp_path / "new.txt"
    new.write_bytes("\ufeffw1 w2 w3\nw4 zzz <s> </s> <pad>\n\nw5\n".encode())
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert lagvae.main(["encode", "--ckpt", "run/model.pt", "--input", str(new)]) == 0
    assert "4 sentences, 9 tokens, 4 outside the vocabulary" in capsys.readouterr().err
    z = __import__("numpy").load(moved / "latents.input.npz")
    assert z["mu"].shape == (4, 2)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"w1 w2 w3\n")))
    assert lagvae.main(["encode", "--ckpt", "run/model.pt", "--input", "-", "--out", "stdin.npz"]) == 0
    again = __import__("numpy").load(tmp_path / "elsewhere" / "stdin.npz")
    assert (again["mu"][0] == z["mu"][0]).all()                # the BOM was not a word
    capsys.readouterr()
    assert lagvae.main(["samples", "--ckpt", "run/model.pt", "--reconstruct", str(new), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "## your sentences" in out and "original  w1 w2 w3" in out
    assert "original  w4 <unk> <unk> <unk> <unk>" in out
    assert lagvae.main(["samples", "--ckpt", "run/model.pt", "--n", "3"]) == 0     # the prior needs only the model
    out, err = capsys.readouterr()
    assert "writing prior samples only" in err and "missing" in err
    assert len(sample_lines(out, "from the prior")) == 3 + 1 and "## test documents" not in out     # and the path


def sample_lines(text, title):
    block = text.split("## " + title, 1)[1].split("\n## ", 1)[0]
    return [line for line in block.splitlines()[1:] if line]


def test_new_text_is_tokenized_as_the_training_data_was():
    vocab = lagvae.datalib.SPECIALS + ["a", "b"]
    ex, tokens, unknown = lagvae.datalib.encode_new_text("\ufeffa b c\r\n<unk> <s>\n", vocab, max_len=2)
    assert [e.tolist() for e in ex] == [[1, 4, 5, 2], [1, 3, 3, 2]]
    assert (tokens, unknown) == (4, 2)


def test_the_readmes_python_example_runs(data_env, tmp_path, monkeypatch, capsys):
    """README "From Python": its code block, executed as written with this clone's path, in a scratch
    directory where neither module is importable but through the path the example puts there."""
    import sys
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0].replace("/path/to/lagvae", str(ROOT))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    for name in ("lagvae", "data"):
        monkeypatch.delitem(sys.modules, name)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("torch.Size([2, 2]) tensor([")
    assert (tmp_path / "runs" / "api-demo" / "model.pt").exists()
    again = lagvae.load(tmp_path / "runs" / "api-demo" / "copy.pt")       # save, then load: the same model
    first = lagvae.load(tmp_path / "runs" / "api-demo")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert again.vocab == first.vocab and again.epoch == first.epoch == 1
