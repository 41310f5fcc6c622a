"""data.py: the synthetic generator, text corpora and length-bucketed batches."""
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import data as datalib


def test_generator_shapes_vocabulary_and_determinism():
    a = datalib.generate_synthetic(n=300, seed=5)
    assert a.shape == (300, 10) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 1000
    assert torch.equal(a, datalib.generate_synthetic(n=300, seed=5))
    assert not torch.equal(a, datalib.generate_synthetic(n=300, seed=6))


def test_generated_data_depends_on_z():
    """The U(-5, 5) z->vocabulary map makes sequences from different mixture components differ:
    token frequencies are far from uniform."""
    counts = Counter(datalib.generate_synthetic(n=2000, seed=1).flatten().tolist())
    assert counts.most_common(1)[0][1] > 20 * (2000 * 10 / 1000)


def test_prepared_files_and_splits(synth_root):
    """The session's data: prepare_synthetic with smaller splits (conftest), read back whole."""
    from conftest import SMALL_SYNTH
    corpus = datalib.load("synthetic", synth_root)
    assert {s: len(v) for s, v in corpus.splits.items()} == SMALL_SYNTH
    assert corpus.vocab[:4] == datalib.SPECIALS
    assert all(len(ex) == 12 and ex[0] == 1 and ex[-1] == 2 for ex in corpus.splits["valid"])
    assert corpus.vocab_size <= 1004


def write_split(tmp_path, texts, stem="t"):
    paths = {}
    for split, text in texts.items():
        paths[split] = tmp_path / f"{stem}.{split}.txt"
        paths[split].write_bytes(text if isinstance(text, bytes) else text.encode())
    return paths


def test_text_corpus_vocab_from_train_unknowns_and_empty_lines(tmp_path):
    paths = write_split(tmp_path, {"train": "a b c\n\nb c\n", "valid": "a z\n", "test": "c\n \n"})
    corpus = datalib.text_corpus("t", paths)
    assert corpus.vocab == datalib.SPECIALS + ["a", "b", "c"]
    assert [x.tolist() for x in corpus.splits["train"]] == [[1, 4, 5, 6, 2], [1, 5, 6, 2]]
    assert corpus.splits["valid"][0].tolist() == [1, 4, 3, 2]            # z -> <unk>
    assert corpus.stats["train"]["empty"] == 1 and corpus.stats["test"]["empty"] == 1


def test_labelled_corpus_keeps_labels_apart(tmp_path):
    paths = write_split(tmp_path, {"train": "3\tgood food\n1\tbad\n", "valid": "5\tgood\n",
                                   "test": "2\tfood bad\n"})
    corpus = datalib.text_corpus("y", paths, labelled=True)
    assert corpus.labels["train"] == [3, 1] and corpus.labels["test"] == [2]
    assert corpus.vocab[4:] == ["good", "food", "bad"]                    # the label is not a word
    assert corpus.splits["train"][1].tolist() == [1, 6, 2]


def test_vocab_file_cap_and_truncation(tmp_path):
    paths = write_split(tmp_path, {"train": "b a a a c b\n", "valid": "c d\n", "test": "a\n"})
    vocab = tmp_path / "v.txt"
    vocab.write_text("a\nb\nc\nd\n")
    full = datalib.text_corpus("t", paths, vocab_file=vocab)
    assert full.vocab[4:] == ["a", "b", "c", "d"]
    assert full.splits["valid"][0].tolist() == [1, 6, 7, 2]               # d known from the file
    capped = datalib.text_corpus("t", paths, vocab_file=vocab, max_vocab=6, max_len=2)
    assert capped.vocab[4:] == ["a", "b"]                                 # the two most frequent
    assert capped.splits["train"][0].tolist() == [1, 5, 4, 2]             # cut to 2 tokens
    assert capped.stats["train"]["truncated"] == 1
    assert datalib.build_vocab([["x", "y", "y"]], max_vocab=5) == datalib.SPECIALS + ["y"]
    dict_file = tmp_path / "v.dict"
    dict_file.write_text("<pad> 0\n<unk> 1\nthe 2\ncat 3\n")
    assert datalib.read_vocab(dict_file) == datalib.SPECIALS + ["the", "cat"]


@pytest.mark.parametrize("texts,labelled,needle", [
    ({"train": b"a \xff b\n"}, False, "t.train.txt:1: not UTF-8"),
    ({"train": "a\nb\n\xe9\n".encode("latin-1")}, False, "t.train.txt:3: not UTF-8"),
    ({"train": "\n\n"}, False, "t.train.txt: no documents"),
    ({"train": ""}, False, "t.train.txt: no documents"),
    ({"train": "good food\n"}, True, "t.train.txt:1: expected an integer label and a tab"),
    ({"train": "1\tok\npos\tbad\n"}, True, "t.train.txt:2: expected an integer label"),
])
def test_bad_text_files_name_file_and_line(tmp_path, texts, labelled, needle):
    ok = "1\ta\n" if labelled else "a\n"
    paths = write_split(tmp_path, {**texts, "valid": ok, "test": ok})
    with pytest.raises(datalib.DataError, match=needle):
        datalib.text_corpus("t", paths, labelled=labelled)


def test_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(datalib.DataError) as e:
        datalib.load("yahoo", tmp_path)
    msg = str(e.value)
    assert "yahoo.train.txt" in msg and "jxhe/vae-lagging-encoder" in msg and str(tmp_path / "yahoo") in msg
    with pytest.raises(datalib.DataError, match="chardata.mat"):
        datalib.load("omniglot", tmp_path)
    with pytest.raises(datalib.DataError, match="unknown dataset"):
        datalib.load("mnist", tmp_path)


def test_bad_vocab_file(tmp_path):
    v = tmp_path / "vocab.txt"
    v.write_text("a\nb\na\n")
    with pytest.raises(datalib.DataError, match="vocab.txt:3: duplicate word 'a'"):
        datalib.read_vocab(v)
    v.write_text("a 1 2\n")
    with pytest.raises(datalib.DataError, match="vocab.txt:1: expected"):
        datalib.read_vocab(v)


def test_text_prefix_dataset(tmp_path):
    write_split(tmp_path, {"train": "x y\n", "valid": "y\n", "test": "x\n"}, stem="corpus")
    corpus = datalib.load(f"text:{tmp_path / 'corpus'}", tmp_path)
    assert len(corpus.splits["train"]) == 1 and corpus.vocab_size == 6


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_keep_every_example_once_with_one_length(shuffle):
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(4, 50, (int(n),), generator=g) for n in torch.randint(3, 9, (101,), generator=g)]
    rng = np.random.default_rng(0) if shuffle else None
    bs = datalib.batches(examples, 8, rng)
    assert all(b.size(0) <= 8 for b in bs)
    seen = Counter(tuple(row.tolist()) for b in bs for row in b)
    assert seen == Counter(tuple(e.tolist()) for e in examples)
    if shuffle:
        again = datalib.batches(examples, 8, np.random.default_rng(1))
        assert [b.shape for b in again] != [b.shape for b in bs] or \
            any(not torch.equal(a, b) for a, b in zip(again, bs))


# ------------------------------------------------------------------------------------------------
# Omniglot

def fake_drawings(chars=2, seed=0):
    """(chars, 20, 105, 105) bool drawings, True = paper, with a distinct ink square per drawer."""
    x = np.ones((chars, 20, 105, 105), dtype=bool)
    for c in range(chars):
        for d in range(20):
            x[c, d, 10 + d:40 + d, 5 * c:5 * c + 30] = False
    return x


def test_area_downsampling_is_exact():
    a = datalib.area_matrix()
    assert a.shape == (28, 105) and np.allclose(a.sum(1), 1)
    paper = np.ones((1, 105, 105), dtype=bool)
    paper[0, :15, :15] = False                        # exactly 4 x 4 target pixels of full ink
    ink = datalib.downsample(paper)[0]
    assert np.allclose(ink[:4, :4], 1) and np.allclose(ink[4:, :], 0) and np.allclose(ink[:, 4:], 0)
    assert ink.sum() == pytest.approx(15 * 15 / 3.75 ** 2, rel=1e-5)      # ink mass is preserved


def test_omniglot_from_raw_npz(tmp_path):
    raw = tmp_path / "omniglot" / "raw"
    raw.mkdir(parents=True)
    np.savez(raw / "images_background.npz", images=fake_drawings(2), labels=np.zeros((2, 20)))
    np.savez(raw / "images_evaluation.npz", images=fake_drawings(1), labels=np.zeros((1, 20)))
    d = datalib.load_omniglot(tmp_path, n_valid=5)
    assert d.source == "raw npz"
    assert [len(d.splits[s]) for s in datalib.SPLITS] == [3 * 15 - 5, 5, 3 * 5]
    assert d.splits["train"].shape[1:] == (1, 28, 28)
    assert set(d.splits["test"].unique().tolist()) <= {0.0, 1.0}


def test_omniglot_from_png_tree(tmp_path):
    from PIL import Image
    drawings = fake_drawings(1)[0]
    char = tmp_path / "omniglot" / "omniglot-py" / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    (tmp_path / "omniglot" / "omniglot-py" / "images_evaluation").mkdir()
    for d in range(20):
        Image.fromarray(drawings[d]).save(char / f"0101_{d + 1:02d}.png")
    npz = datalib.split_drawers(drawings[None])
    got = datalib.load_png_tree([char.parents[1], char.parents[2] / "images_evaluation"])
    assert np.array_equal(got["train"], npz["train"]) and np.array_equal(got["test"], npz["test"])


def test_omniglot_from_chardata_mat(tmp_path):
    import scipy.io
    g = np.random.default_rng(0)
    train, test = g.random((30, 28, 28)), g.random((7, 28, 28))
    # Burda et al. store images column-major: column n is image n flattened in Fortran order.
    fortran = lambda x: x.transpose(0, 2, 1).reshape(len(x), -1).T
    (tmp_path / "omniglot").mkdir()
    scipy.io.savemat(tmp_path / "omniglot" / "chardata.mat", {"data": fortran(train), "testdata": fortran(test)})
    got = datalib.load_chardata(tmp_path / "omniglot" / "chardata.mat")
    assert np.allclose(got["train"], train) and np.allclose(got["test"], test)
    d = datalib.load_omniglot(tmp_path, n_valid=4)
    assert d.source == "chardata.mat" and len(d.splits["valid"]) == 4 and len(d.splits["test"]) == 7


@pytest.mark.parametrize("arrays,needle", [
    ({"data": np.zeros((784, 3))}, "missing array 'testdata'"),
    ({"data": np.zeros((780, 3)), "testdata": np.zeros((784, 2))}, "shape (780, 3), expected (784, N)"),
    ({"data": np.full((784, 3), 2.0), "testdata": np.zeros((784, 2))}, "expected intensities in [0, 1]"),
])
def test_bad_chardata(tmp_path, arrays, needle):
    import scipy.io
    path = tmp_path / "chardata.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(datalib.DataError, match=re.escape(needle)):
        datalib.load_chardata(path)
    path.write_bytes(b"not a mat file")
    with pytest.raises(datalib.DataError, match="chardata.mat: not a readable MATLAB file"):
        datalib.load_chardata(path)


@pytest.mark.parametrize("images,needle", [
    (np.ones((2, 20, 28, 28), dtype=bool), "expected (characters, 20, 105, 105)"),
    (np.ones((2, 20, 105, 105), dtype=np.uint8), "expected bool"),
])
def test_bad_raw_npz(tmp_path, images, needle):
    path = tmp_path / "images_background.npz"
    np.savez(path, images=images)
    with pytest.raises(datalib.DataError, match=re.escape(needle)):
        datalib.load_raw_npz([path])


def test_binarization_fixed_for_eval_dynamic_for_train(tmp_path):
    raw = tmp_path / "omniglot" / "raw"
    raw.mkdir(parents=True)
    grey = np.ones((4, 20, 105, 105), dtype=bool)
    grey[:, :, ::2, ::2] = False                        # about 1/4 ink everywhere: grey after resize
    for name in ("images_background.npz", "images_evaluation.npz"):
        np.savez(raw / name, images=grey)
    a, b = datalib.load_omniglot(tmp_path, n_valid=10), datalib.load_omniglot(tmp_path, n_valid=10)
    assert torch.equal(a.splits["test"], b.splits["test"]) and torch.equal(a.splits["valid"], b.splits["valid"])
    x = a.splits["train"]
    assert 0 < float(x.min()) and float(x.max()) < 1          # kept grey
    s1, s2 = a.prepare(x), a.prepare(x)
    assert not torch.equal(s1, s2)
    assert float(s1.mean()) == pytest.approx(float(x.mean()), abs=0.01)    # Bernoulli(p) has mean p
    assert float(a.splits["test"].mean()) == pytest.approx(float(x.mean()), abs=0.01)


@pytest.mark.skipif(not os.environ.get("LAGVAE_DATA"), reason="LAGVAE_DATA is not set (shared data)")
@pytest.mark.slow
def test_shared_omniglot_matches_the_derived_stand_in():
    root = Path(os.environ["LAGVAE_DATA"])
    derived = root / "omniglot" / "derived" / "omniglot28_area_split15-5.npz"
    if not derived.is_file():
        pytest.skip(f"{derived} not present")
    ours = datalib.load_raw_npz(datalib.omniglot_sources(root)["raw npz"])
    with np.load(derived) as ref:
        for split in ("train", "test"):
            diff = np.abs(ours[split] - ref[split] / 255.0)
            assert diff.max() < 0.5 / 255 + 1e-6          # equal up to its uint8 rounding
            assert ours[split].mean() == pytest.approx((ref[split] / 255.0).mean(), abs=1e-4)


@pytest.mark.skipif(not os.environ.get("LAGVAE_DATA"), reason="LAGVAE_DATA is not set (shared data)")
@pytest.mark.slow
def test_info_lists_what_is_here_and_what_is_missing(capsys):
    assert datalib.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "yahoo-small", "ptb", "omniglot"):
        assert f"{name}: available" in out
    assert "yahoo: MISSING" in out and "yelp: MISSING" in out


def test_only_newlines_end_documents(tmp_path):
    paths = write_split(tmp_path, {"train": "a\x0cb c\r\nd\u2028e\n", "valid": "a\n", "test": "a\n"})
    corpus = datalib.text_corpus("t", paths)
    assert len(corpus.splits["train"]) == 2
    assert [len(x) - 2 for x in corpus.splits["train"]] == [3, 2]     # whitespace inside a line still splits tokens


def test_an_empty_split_is_an_error(tmp_path):
    paths = write_split(tmp_path, {"train": "a b\n", "valid": "a\n", "test": "a\n"})
    with pytest.raises(datalib.DataError, match="no valid documents"):
        datalib.text_corpus("t", paths, take={"valid": slice(5, None)})


def test_eval_binarization_does_not_depend_on_the_subset(omni_root):
    full, part = datalib.load_omniglot(omni_root), datalib.load_omniglot(omni_root, subset=30)
    assert torch.equal(full.splits["test"][:30], part.splits["test"])
    assert torch.equal(full.splits["valid"][:30], part.splits["valid"])


# ------------------------------------------------------------------------------------------------
# Issue 12: bad files are one DataError naming the file, never a traceback

@pytest.mark.parametrize("label", ["--1", "\u00b2", "\u0661", "+1", "1.5", "-"])
def test_labels_are_ascii_integers(tmp_path, label):
    paths = write_split(tmp_path, {"train": f"3\tok\n{label}\tbad\n", "valid": "1\ta\n", "test": "1\ta\n"})
    with pytest.raises(datalib.DataError, match="t.train.txt:2: expected an integer label and a tab"):
        datalib.text_corpus("t", paths, labelled=True)
    assert datalib.text_corpus("t", write_split(tmp_path, {"train": "-2\tok\n", "valid": "1\ta\n", "test": "1\ta\n"}),
                               labelled=True).labels["train"] == [-2]


def test_non_utf8_vocabulary_file(tmp_path):
    v = tmp_path / "vocab.txt"
    v.write_bytes("a\nb\n\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(datalib.DataError, match=r"vocab.txt:3: not UTF-8"):
        datalib.read_vocab(v)


@pytest.mark.parametrize("vocab,max_vocab,train", [
    ("", 0, "a b\n"),                                  # an empty vocabulary file
    ("<pad>\n<s>\n</s>\n<unk>\n", 0, "a b\n"),         # specials only
    ("x\ny\n", 0, "a b\n"),                            # no training word in it
    ("a\nb\n", 4, "a b\n"),                            # a cap that keeps only the specials
    (None, 3, "a b\n"),
    (None, 0, "<unk> <s>\n"),                          # training text of special tokens only
])
def test_a_vocabulary_that_maps_everything_to_unk_is_refused(tmp_path, vocab, max_vocab, train):
    """It once trained to a 'perplexity' of 1.07: predicting <unk> after <unk> is easy."""
    paths = write_split(tmp_path, {"train": train, "valid": "a\n", "test": "b\n"})
    vocab_file = None
    if vocab is not None:
        vocab_file = tmp_path / "vocab.txt"
        vocab_file.write_text(vocab)
    with pytest.raises(datalib.DataError, match="every training token would be <unk>"):
        datalib.text_corpus("t", paths, vocab_file=vocab_file, max_vocab=max_vocab)
    if not train.startswith("<"):
        assert datalib.text_corpus("t", paths, max_vocab=5).vocab[4:] == ["a"]      # one known word is enough


def cells(*items):
    """A MATLAB cell array."""
    c = np.empty((1, len(items)), dtype=object)
    c[0, :] = items
    return c


@pytest.mark.parametrize("arrays,needle", [
    ({"data": np.array([["a"] * 3] * 784), "testdata": np.zeros((784, 2))}, "'data' holds <U1 values"),
    ({"data": np.zeros((784, 3)), "testdata": cells(np.zeros(3), "x")}, "'testdata' holds object values"),
    ({"data": {"images": np.zeros((784, 3))}, "testdata": np.zeros((784, 2))}, "'data' holds [('images', 'O')] values"),
    ({"data": np.zeros((784, 3)) + 1j, "testdata": np.zeros((784, 2))}, "'data' holds complex128 values"),
    ({"data": np.zeros((784, 0)), "testdata": np.zeros((784, 2))}, "shape (784, 0), expected (784, N) with N >= 1"),
    ({"data": np.zeros((784, 3)), "testdata": np.zeros((0, 0))}, "'testdata' has shape (0, 0)"),
])
def test_chardata_with_non_numeric_or_empty_arrays(tmp_path, capsys, arrays, needle):
    import scipy.io
    (tmp_path / "omniglot").mkdir()
    path = tmp_path / "omniglot" / "chardata.mat"
    scipy.io.savemat(path, arrays)
    with pytest.raises(datalib.DataError, match=re.escape(needle)):
        datalib.load_chardata(path)
    assert datalib.main(["--data-dir", str(tmp_path), "info"]) == 0      # info reports it in its line
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("omniglot:")]
    assert len(lines) == 1 and lines[0].startswith("omniglot: UNUSABLE.") and needle in lines[0]


def png_tree(root, size=(105, 105), garbage=False):
    from PIL import Image
    char = root / "omniglot" / "omniglot-py" / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    (root / "omniglot" / "omniglot-py" / "images_evaluation").mkdir()
    for d in range(20):
        Image.fromarray(np.ones(size[::-1], dtype=bool)).save(char / f"0101_{d + 1:02d}.png")
    if garbage:
        (char / "0101_07.png").write_bytes(b"not a png")
    return char


@pytest.mark.parametrize("size,garbage,needle", [((28, 28), False, "0101_01.png: a 28x28 image, expected 105x105"),
                                                 ((105, 104), False, "a 105x104 image"),
                                                 ((105, 105), True, "0101_07.png: not a readable image")])
def test_png_tree_with_wrong_images(tmp_path, size, garbage, needle):
    png_tree(tmp_path, size, garbage)
    with pytest.raises(datalib.DataError, match=re.escape(needle)):
        datalib.load("omniglot", tmp_path)


GENERATE = datalib.generate_synthetic


def small_synthetic(monkeypatch, root=None, first_run_seed=None):
    """prepare_synthetic on 7 sequences instead of 20,000. With first_run_seed, another run (with that
    seed) writes its files under root while this one is generating, as a concurrent process would."""
    monkeypatch.setattr(datalib, "SYNTH_SPLITS", {"train": 3, "valid": 2, "test": 2})
    others = [] if first_run_seed is None else [first_run_seed]

    def generate(n, seed=datalib.SYNTH_SEED):
        seqs = GENERATE(n, seed=seed)
        if others:
            datalib.prepare_synthetic(root, seed=others.pop())
        return seqs
    monkeypatch.setattr(datalib, "generate_synthetic", generate)


def test_synthetic_data_is_never_regenerated_over_existing_files(tmp_path, monkeypatch, capsys):
    small_synthetic(monkeypatch)
    paths = datalib.prepare_synthetic(tmp_path)
    assert [len(p.read_text().splitlines()) for p in paths.values()] == [3, 2, 2]
    paths["test"].unlink()
    paths["train"].write_text("1 2 3\n")                # e.g. edited, or from another seed
    with pytest.raises(datalib.DataError, match=r"will not generate over existing lagvae_synthetic.train.txt, "
                                                r"lagvae_synthetic.valid.txt \(lagvae_synthetic.test.txt missing\)"):
        datalib.load("synthetic", tmp_path)
    assert paths["train"].read_text() == "1 2 3\n" and not paths["test"].exists()
    assert datalib.main(["--data-dir", str(tmp_path), "prepare", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("data.py: error: synthetic: will not generate over existing")
    assert paths["train"].read_text() == "1 2 3\n" and sorted(os.listdir(paths["train"].parent)) == \
        ["lagvae_synthetic.train.txt", "lagvae_synthetic.valid.txt"]        # no temporary files left


def test_runs_generating_together_agree_or_stop(tmp_path, monkeypatch):
    """Two runs that start on a fresh data root both generate; the files of the first stay and the
    second checks it wrote the same (another seed's data is an error, not an overwrite)."""
    small_synthetic(monkeypatch, tmp_path, first_run_seed=datalib.SYNTH_SEED)
    paths = datalib.prepare_synthetic(tmp_path)
    assert [len(p.read_text().splitlines()) for p in paths.values()] == [3, 2, 2]
    for p in paths.values():
        p.unlink()
    small_synthetic(monkeypatch, tmp_path, first_run_seed=5)
    with pytest.raises(datalib.DataError, match="appeared while generating, with other content"):
        datalib.prepare_synthetic(tmp_path)
    assert len(list(paths["train"].parent.iterdir())) == 3          # the first run's files, no temporaries


# ------------------------------------------------------------------------------------------------
# Splits: disjoint and of the sizes README states (a one-document overlap changes every number).

def test_yahoo_small_trains_on_the_first_9000_validation_documents_and_validates_on_the_last_1000(tmp_path):
    d = tmp_path / "yahoo"
    d.mkdir()
    docs = [f"n{i // 100} m{i % 100}" for i in range(10_000)]        # every document different
    (d / "yahoo.valid.txt").write_text("\n".join(docs) + "\n")
    (d / "yahoo.test.txt").write_text("\n".join(docs[:30]) + "\n")
    (d / "vocab.txt").write_text("\n".join([f"n{i}" for i in range(100)] + [f"m{i}" for i in range(100)]) + "\n")
    corpus = datalib.load("yahoo-small", tmp_path)
    text = lambda ex: " ".join(corpus.vocab[int(t)] for t in ex[1:-1])
    train, valid = [text(x) for x in corpus.splits["train"]], [text(x) for x in corpus.splits["valid"]]
    assert train == docs[:9000] and valid == docs[9000:]
    assert not set(train) & set(valid) and len(corpus.splits["test"]) == 30


SPLIT_SIZES = {"ptb": (42068, 3370, 3761), "yahoo-small": (9000, 1000, 10000), "synthetic": (16000, 2000, 2000)}


def test_synthetic_splits_have_the_sizes_readme_states():
    """prepare_synthetic writes SYNTH_SPLITS (checked on small splits above and below), so these are
    the sizes of generated data."""
    assert tuple(datalib.SYNTH_SPLITS.values()) == SPLIT_SIZES["synthetic"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LAGVAE_DATA"), reason="LAGVAE_DATA is not set (shared data)")
@pytest.mark.parametrize("name", ["ptb", "yahoo-small"])
def test_shared_text_splits_have_the_sizes_readme_states(name):
    root = os.environ["LAGVAE_DATA"]
    corpus = datalib.load(name, root)
    assert tuple(len(corpus.splits[s]) for s in ("train", "valid", "test")) == SPLIT_SIZES[name]
    if name == "yahoo-small":               # train and valid are one file: disjoint by position
        lines = [ln for ln in Path(root, "yahoo", "yahoo.valid.txt").read_text().split("\n") if ln.strip()]
        assert len(lines) == 10_000


def test_omniglot_holds_out_2000_training_images_and_tests_on_drawers_16_to_20(omni_root):
    """Every image of drawers 1-15 once, in train or in valid; drawers 16-20 are the test set."""
    corpus = datalib.load("omniglot", omni_root)
    n = {s: len(corpus.splits[s]) for s in ("train", "valid", "test")}
    assert n == {"train": 144 * 15 - 2000, "valid": 2000, "test": 144 * 5}
