"""Datasets for lagvae, read from their published formats.

The data root is `--data-dir`, else $LAGVAE_DATA, else ./data. Text corpora are one document per
line, whitespace-tokenized; every example becomes <s> tokens </s> as a LongTensor, and batches are
length-bucketed (one length per batch, no padding), as in the official code.

    python data.py info                 # what is where
    python data.py prepare synthetic    # generate the synthetic data of App. B.1
"""
import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]


class DataError(Exception):
    """Bad or missing data; the CLI prints the message as one line and exits with code 2."""


def data_root(arg=None):
    return Path(arg or os.environ.get("LAGVAE_DATA") or "data")


# ------------------------------------------------------------------------------------------------
# Text: vocabulary, examples, length buckets

@dataclass
class TextCorpus:
    name: str
    vocab: list            # id -> word; ids 0..3 are SPECIALS
    splits: dict           # split name -> list of LongTensor (<s> ... </s>)
    kind: str = "text"

    @property
    def vocab_size(self):
        return len(self.vocab)


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not any(lines):
        raise DataError(f"{path}: file has no tokens (expected one document per line)")
    return [toks for toks in lines if toks]


def build_vocab(docs):
    vocab, seen = list(SPECIALS), set(SPECIALS)
    for toks in docs:
        for w in toks:
            if w not in seen:
                seen.add(w)
                vocab.append(w)
    return vocab


def encode(docs, vocab):
    w2i = {w: i for i, w in enumerate(vocab)}
    unk, bos, eos = w2i[UNK], w2i[BOS], w2i[EOS]
    return [torch.tensor([bos] + [w2i.get(w, unk) for w in toks] + [eos]) for toks in docs]


def text_corpus(name, paths, subset=0):
    """paths: split -> file. Vocabulary from the training split only (unknown words -> <unk>)."""
    missing = [str(p) for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise DataError(f"{name}: missing {', '.join(missing)}")
    docs = {s: read_lines(p) for s, p in paths.items()}
    if subset:
        docs = {s: d[:subset] for s, d in docs.items()}
    vocab = build_vocab(docs["train"])
    return TextCorpus(name, vocab, {s: encode(d, vocab) for s, d in docs.items()})


def batches(examples, batch_size, rng=None):
    """Length buckets cut into batches of at most batch_size, each one length (no padding).

    With rng, examples are shuffled within each length before cutting and the batch order is
    shuffled, so every epoch sees new batch compositions (the official code fixes the composition
    once for the whole run; we reshuffle on purpose, as plain SGD would)."""
    by_len = {}
    for i, ex in enumerate(examples):
        by_len.setdefault(len(ex), []).append(i)
    out = []
    for length in sorted(by_len):
        idx = by_len[length]
        if rng is not None:
            idx = [idx[j] for j in rng.permutation(len(idx))]
        for s in range(0, len(idx), batch_size):
            out.append(torch.stack([examples[i] for i in idx[s:s + batch_size]]))
    if rng is not None:
        out = [out[j] for j in rng.permutation(len(out))]
    return out


# ------------------------------------------------------------------------------------------------
# Synthetic data (App. B.1)

SYNTH_SEED = 19950927          # the official generator's default seed
SYNTH_SPLITS = {"train": 16000, "valid": 2000, "test": 2000}


class SyntheticGenerator(nn.Module):
    """One-layer LSTM LM conditioned on a 2-d z: initial state an affine map of z, and logits that add
    a linear map of z to the LSTM output. LSTM parameters U(-1, 1), z->vocabulary weights U(-5, 5),
    so z strongly shapes the data (App. B.1)."""

    def __init__(self, vocab=1000, ni=100, nh=100, nz=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, ni)
        self.lstm = nn.LSTM(ni + nz, nh, batch_first=True)
        self.z_to_c = nn.Linear(nz, nh)
        self.out = nn.Linear(nh, vocab, bias=False)
        self.z_to_vocab = nn.Linear(nz, vocab, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -1, 1)
        nn.init.uniform_(self.z_to_vocab.weight, -5, 5)

    @torch.no_grad()
    def sample(self, z, length, gen):
        c = self.z_to_c(z)[None]
        state = (torch.tanh(c), c)
        tok = torch.randint(self.embed.num_embeddings, (z.size(0), 1), generator=gen)
        seq = [tok]
        for _ in range(length - 1):
            inp = torch.cat([self.embed(tok), z[:, None]], -1)
            h, state = self.lstm(inp, state)
            logits = self.out(h[:, -1]) + self.z_to_vocab(z)
            tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            seq.append(tok)
        return torch.cat(seq, 1)


def generate_synthetic(n=20000, length=10, vocab=1000, seed=SYNTH_SEED):
    """n sequences of `length` ids in [0, vocab); z from a uniform mixture of 4 unit-variance
    Gaussians at (+-2, +-2). Deterministic in seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SyntheticGenerator(vocab)
    means = torch.tensor([[-2., -2.], [-2., 2.], [2., -2.], [2., 2.]])
    comp = torch.randint(4, (n,), generator=gen)
    z = means[comp] + torch.randn(n, 2, generator=gen)
    return torch.cat([model.sample(z[i:i + 1000], length, gen) for i in range(0, n, 1000)])


def synthetic_paths(root):
    return {s: Path(root) / "synthetic" / f"lagvae_synthetic.{s}.txt" for s in SYNTH_SPLITS}


def prepare_synthetic(root, seed=SYNTH_SEED):
    paths = synthetic_paths(root)
    seqs = generate_synthetic(sum(SYNTH_SPLITS.values()), seed=seed).tolist()
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in SYNTH_SPLITS.items():
        tmp = paths[split].with_suffix(".tmp")
        tmp.write_text("".join(" ".join(map(str, s)) + "\n" for s in seqs[start:start + n]))
        os.replace(tmp, paths[split])
        start += n
    return paths


# ------------------------------------------------------------------------------------------------
# Registry

def load(name, root=None, subset=0):
    """Load dataset `name` from the data root. subset > 0 keeps the first `subset` examples per split."""
    root = data_root(root)
    if name == "synthetic":
        paths = synthetic_paths(root)
        if not all(p.is_file() for p in paths.values()):
            try:
                prepare_synthetic(root)
            except OSError as e:
                raise DataError(f"synthetic: cannot write generated data under {root}/synthetic "
                                f"({e.strerror}); set --data-dir or LAGVAE_DATA to a writable folder")
        return text_corpus(name, paths, subset)
    raise DataError(f"unknown dataset {name!r} (expected one of: synthetic)")


def info(root):
    root = data_root(root)
    print(f"data root: {root.resolve()}")
    paths = synthetic_paths(root)
    state = "generated" if all(p.is_file() for p in paths.values()) else \
        "not generated yet (python data.py prepare synthetic, or first use)"
    print(f"synthetic: {state}; splits {SYNTH_SPLITS}; files {paths['train'].parent}")
    if all(p.is_file() for p in paths.values()):
        corpus = load("synthetic", root)
        sizes = {s: len(v) for s, v in corpus.splits.items()}
        print(f"  sizes {sizes}, vocab {corpus.vocab_size}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="lagvae datasets")
    ap.add_argument("--data-dir", default=None, help="data root (default $LAGVAE_DATA or ./data)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="list every dataset and where its files are")
    p = sub.add_parser("prepare", help="generate a dataset that is made, not downloaded")
    p.add_argument("name", choices=["synthetic"])
    p.add_argument("--seed", type=int, default=SYNTH_SEED)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            info(args.data_dir)
        else:
            for split, path in prepare_synthetic(data_root(args.data_dir), args.seed).items():
                print(f"{split}: {path}")
    except (DataError, OSError) as e:
        print(f"data.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
