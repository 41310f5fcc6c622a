"""data.py: the synthetic generator, text corpora and length-bucketed batches."""
from collections import Counter

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
    corpus = datalib.load("synthetic", synth_root)
    assert {s: len(v) for s, v in corpus.splits.items()} == datalib.SYNTH_SPLITS
    assert corpus.vocab[:4] == datalib.SPECIALS
    assert all(len(ex) == 12 and ex[0] == 1 and ex[-1] == 2 for ex in corpus.splits["valid"])
    assert corpus.vocab_size <= 1004


def test_text_corpus_vocab_from_train_and_unknowns(tmp_path):
    (tmp_path / "t.train.txt").write_text("a b c\n\nb c\n")
    (tmp_path / "t.valid.txt").write_text("a z\n")
    (tmp_path / "t.test.txt").write_text("c\n")
    corpus = datalib.text_corpus("t", {s: tmp_path / f"t.{s}.txt" for s in ("train", "valid", "test")})
    assert corpus.vocab == datalib.SPECIALS + ["a", "b", "c"]
    assert len(corpus.splits["train"]) == 2                   # the empty line is dropped
    assert corpus.splits["valid"][0].tolist() == [1, 4, 3, 2]  # z -> <unk>


def test_bad_text_files(tmp_path):
    paths = {s: tmp_path / f"t.{s}.txt" for s in ("train", "valid", "test")}
    with pytest.raises(datalib.DataError, match="missing"):
        datalib.text_corpus("t", paths)
    for p in paths.values():
        p.write_text("a b\n")
    paths["valid"].write_bytes(b"a \xff b\n")
    with pytest.raises(datalib.DataError, match="t.valid.txt: not UTF-8"):
        datalib.text_corpus("t", paths)
    paths["valid"].write_text("\n\n")
    with pytest.raises(datalib.DataError, match="t.valid.txt: file has no tokens"):
        datalib.text_corpus("t", paths)


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
