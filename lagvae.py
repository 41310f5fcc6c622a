"""lagvae: VAEs without posterior collapse, after He, Spokoyny, Neubig & Berg-Kirkpatrick,
"Lagging Inference Networks and Posterior Collapse in Variational Autoencoders" (ICLR 2019).

    python lagvae.py train --data synthetic --aggressive --nz 1
    python lagvae.py eval --ckpt runs/synthetic-nz1-aggressive-s0/model.pt
    python lagvae.py table runs/*
    python lagvae.py report

Sections, each using only those above it: 1 config & presets, 2 models, 3 objectives & estimators,
4 runs (directories, checkpoints, resume, signals, progress), 5 evaluation, 6 training modes, 7 saved
models (eval, samples, latents, Python API), 8 analysis (tables, figures, the claims' verdicts),
9 benchmark, 10 CLI (with the report). Paper equations are tagged `# Eq. N`.
"""
import argparse
import collections
import contextlib
import csv
import dataclasses
import errno
import fcntl
import functools
import glob
import hashlib
import io
import json
import math
import os
import pickle
import platform
import random
import re
import reprlib
import resource
import shutil
import signal
import subprocess
import sys
import time
import threading
import warnings
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data as datalib

# ------------------------------------------------------------------------------------------------
# 1. Config & presets. Every field is a command-line flag (`--field-name`) declared once, with its
# help, its --help group, its admissible values and whether --resume may change it; a preset overrides
# the defaults and explicit flags override the preset. The resolved config is saved with every run.

# Past these, numpy and torch overflow instead of computing (a cyclical period of 0 iterations, an
# optimizer step that does not fit float32, the dtype of every model).
INT_MAX = 2 ** 63 - 1
FLOAT_MAX = float(torch.finfo(torch.float32).max)


def within(lo, hi=math.inf, open_lo=False, open_hi=False):
    """A number's rule: value -> what was expected where the value is outside [lo, hi] (an open end
    excludes its bound), not finite or past its type's range; None where it is admitted. Sign and range
    are checked here only, so a flag that parses is one the code can use as meant."""
    def expected(value):
        integer = isinstance(value, int)
        top = INT_MAX if integer else FLOAT_MAX
        above_lo = lo < value if open_lo else lo <= value
        below_hi = value < hi if open_hi else value <= hi
        if (integer or math.isfinite(value)) and abs(value) <= top and above_lo and below_hi:
            return None
        fmt = lambda v: str(v) if isinstance(v, int) else f"{v:g}"
        kind = "an integer" if integer else "a finite number"
        if hi < math.inf:
            return f"{kind} in {'(' if open_lo else '['}{fmt(lo)}, {fmt(hi)}{')' if open_hi else ']'}"
        # the type's own bound is named only to a value past it
        return f"{kind} {'>' if open_lo else '>='} {fmt(lo)}" + (f" and at most {fmt(top)}" if abs(value) > top else "")
    return expected


def parsed(ok, expected):
    """A string's rule: value -> `expected` where ok(value) is false or raises ValueError; else None."""
    def rule(value):
        try:
            return None if ok(value) else expected
        except ValueError:
            return expected
    return rule


WIDTH = within(1, 2 ** 14)   # layer sizes: 16x the paper's 1024 units; a 2^14-unit LSTM is already 8.6 GB
COUNT = within(1)
NONNEG = within(0)
POSITIVE = within(0, open_lo=True)
PROBABILITY = within(0, 1, open_hi=True)
LR = within(0, 1e6, open_lo=True)    # lr 16 already diverges the text model; 1e6 x 1e6 still fits Adam's first step
MAX_KERNEL = 55                      # a masked kernel wider than 2 x 27 + 1 sees only padding beyond 28 x 28

# The aggressive mode's stopping rules (--rule), set over the preset and under explicit flags.
# paper: the inner loop ends at the first window whose mean loss is above the previous one's, and
#   validation MI is checked once per epoch. adaptive: the same inner loop, but MI is checked four
#   times per epoch, must improve by 0.05 nats to count, and once it has left the collapsed floor
#   (0.2 nats) two checks without improvement end the phase mid-epoch, instead of the paper's
#   several epochs of creeping MI. A shorter inner loop (--inner-window 5 --inner-z 1) was the
#   first adaptive rule; it behaves like a fixed budget of 10 steps and missed escapes, as the paper's
#   Table 4 budget of 10 does (RESULTS.md compares them).
RULES = {"paper": {}, "adaptive": dict(mi_checks=4, mi_tol=0.05, mi_floor=0.2)}


def arg(default, help, rule=None, resume=False, group=None):
    """A Config field: its default, its --help text, its rule (within() or parsed(): value -> what was
    expected where the value is refused), whether --resume may change it (True, or a function of the saved
    config that says) and, for the first field of a --help group, the group's title."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "resume": resume, "group": group})


@dataclass
class Config:
    data: str = arg("synthetic", "dataset: synthetic, yahoo, yelp, ptb, yahoo-small, omniglot, or text:PREFIX "
                                 "for the corpus PREFIX.{train,valid,test}.txt", group="run")
    preset: str = arg("", "synthetic | paper | cpu | cpu-full | tiny; default synthetic (synthetic data), cpu "
                          "(ptb, yahoo-small, omniglot) or cpu-full (any other corpus: nothing cut)")
    data_dir: str = arg("", "data root; default $LAGVAE_DATA or ./data", resume=True)
    subset: int = arg(0, "keep the first N examples of each split (0 = all)", NONNEG)
    max_test: int = arg(0, "evaluate on the first N test examples (0 = all)", NONNEG, resume=True)
    # a vocabulary that keeps no word is refused by data.py
    max_vocab: int = arg(0, "text: keep the N most frequent training words (0 = all)", NONNEG)
    max_len: int = arg(0, "text: cut documents to their first N tokens (0 = no cut)", NONNEG)
    out: str = arg("", "run directory; default runs/<data>[-<preset>][-nz<nz>]-<mode>-s<seed>, the preset and nz "
                       "where they are not the default", resume=True)
    # numpy's seeding range
    seed: int = arg(0, "seed of initialization, batch order and noise", within(0, 2 ** 32 - 1))
    device: str = arg("auto", "auto | cpu | cuda | cuda:N", parsed(re.compile(r"auto|cpu|cuda(:\d+)?").fullmatch,
                                                                    "auto, cpu, cuda or cuda:N"), resume=True)
    quiet: bool = arg(False, "print nothing but errors", resume=True)
    progress_every: float = arg(30.0, "seconds between progress lines (0 = none)", NONNEG, resume=True)
    resume: bool = arg(False, "continue the run in <out> from its last.pt (same config; see README)", resume=True)
    overwrite: bool = arg(False, "replace the run in <out>, removing all its files first", resume=True)
    checkpoint_minutes: float = arg(5.0, "also write last.pt within an epoch this often (0 = at epoch ends)",
                                    NONNEG, resume=True)
    # May change on --resume, but another count splits float sums otherwise: from there the run is no
    # longer bit-identical to one never stopped (the banner says so).
    threads: int = arg(0, "CPU threads (0 = torch's default: every core, or $OMP_NUM_THREADS)", within(0, 1024),
                       resume=True)
    nz: int = arg(32, "latent dimensions", WIDTH, group="model (App. B)")
    ni: int = arg(512, "word embedding size", WIDTH)
    enc_nh: int = arg(1024, "encoder LSTM units / ResNet channels", WIDTH)
    dec_nh: int = arg(1024, "decoder LSTM units / PixelCNN feature maps", WIDTH)
    dec_kernels: str = arg("7,7,7,7,7,5,5,5,5,3,3,3,3", "PixelCNN layers (App. B.3)",
                           parsed(lambda v: all(int(k) % 2 and 0 < int(k) <= MAX_KERNEL for k in v.split(",")),
                                  f"odd kernel sizes up to {MAX_KERNEL} like 7,5,3"))
    dropout_in: float = arg(0.5, "text decoder: dropout on its input embeddings", PROBABILITY)
    dropout_out: float = arg(0.5, "text decoder: dropout on its LSTM outputs", PROBABILITY)
    shifted_init: bool = arg(False, "App. G: U(0.04, 0.06) weights, U(0, 0.2) embeddings (text)")
    batch_size: int = arg(32, "examples per minibatch", COUNT, group="optimisation (App. B)")
    optim: str = arg("sgd", "sgd (text, App. B.2) | adam (images, App. B.3)", parsed(("sgd", "adam").__contains__,
                                                                                      "sgd or adam"))
    # lr 0 would train nothing
    lr: float = arg(1.0, "learning rate (encoder and decoder)", LR)
    # a norm <= 0 zeroes or flips the gradient
    clip_grad: float = arg(5.0, "clip the joint gradient norm of encoder and decoder to this", POSITIVE)
    # The cyclical schedule's period is epochs x batches / cycles: another --epochs would reshape the
    # KL schedule of a --cyclical run halfway.
    epochs: int = arg(100, "most epochs to train", COUNT, resume=lambda saved: not saved.get("cyclical"))
    decay_patience: int = arg(2, "epochs without a better validation -ELBO before lr decays", COUNT)
    # 1: restart from the best model without decaying
    lr_decay: float = arg(0.5, "lr factor at each decay (training restarts from the best model)",
                          within(0, 1, open_lo=True))
    # 0 would stop before the first epoch
    max_decay: int = arg(5, "stop after this many decays", COUNT, resume=True)
    # An lr-schedule control: does a gap between two modes come from their own decay epochs? A run
    # directory stands for its decays (the train command reads them before resolve_config, so config.json
    # says them).
    decay_at: str = arg("", 'decay after exactly these epochs, e.g. "9,23,35,44,47", "never", or a finished '
                            'run directory whose decay epochs to repeat (default: on a plateau)',
                        parsed(lambda v: not v or decay_epochs(v) is not None,
                               'increasing epochs >= 1 like 9,23,35, "never" or (on the command line) a run '
                               'directory'))
    aggressive: bool = arg(False, "Algorithm 1: encoder-only inner loop before each decoder update",
                           group="aggressive inference-network training (Algorithm 1, Sec. 4.2)")
    rule: str = arg("paper", "when inner loop and aggressive phase end: paper | adaptive (README: Training modes)",
                    parsed(RULES.__contains__, f"one of {', '.join(RULES)}"))
    inner_window: int = arg(15, "inner loop stops when the mean loss of a window stops falling", COUNT)
    inner_z: float = arg(0.0, "... or falls by less than inner_z standard errors (0 = the paper's test)", NONNEG)
    max_inner_steps: int = arg(100, "most inner steps per decoder update", COUNT)
    inner_steps: int = arg(0, "fixed inner budget instead of the convergence test (Table 4)", NONNEG)
    mi_checks: int = arg(1, "validation-MI checks per epoch while aggressive (the paper: 1)", COUNT)
    mi_patience: int = arg(2, "checks without a new best validation MI before aggressive ends", COUNT)
    mi_tol: float = arg(0.0, "a new best must beat the old by more than this many nats", NONNEG)
    mi_floor: float = arg(0.0, "checks within an epoch count against patience only once MI passed this", NONNEG)
    anneal: bool = arg(False, "KL weight rises linearly from kl_start to 1 over the warm-up",
                       group="KL weight (App. B, E) and the other modes of Tables 1-2, 4, 9, 10")
    kl_start: float = arg(0.1, "KL weight at the start of the warm-up", within(0, 1))
    warm_up: int = arg(10, "KL warm-up length in epochs", COUNT)
    warm_up_iters: int = arg(0, "KL warm-up length in iterations instead of epochs (Table 9)", NONNEG)
    beta: float = arg(1.0, "constant KL weight (beta-VAE); evaluation always uses 1", NONNEG)
    savae: bool = arg(False, "semi-amortized VAE (Kim et al. 2018)")
    svi_steps: int = arg(10, "SA-VAE: gradient steps refining each posterior", COUNT)
    svi_lr: float = arg(1.0, "SA-VAE: step size of the refinement", POSITIVE)
    lm: bool = arg(False, "no latent: the decoder alone, exact NLL")
    encoder_lr_mult: float = arg(1.0, "encoder lr = lr * this (Table 10)", LR)
    free_bits: float = arg(0.0, "KL term max(lambda, KL_d) per dimension (Kingma et al. 2016)", NONNEG,
                           group="later remedies")
    cyclical: int = arg(0, "M cycles of KL annealing, half of each a ramp (Fu et al. 2019)", NONNEG)
    bn_gamma: float = arg(0.0, "BN-VAE: batch-normalized means, fixed scale gamma (Zhu et al. 2020)", NONNEG)
    pretrain_encoder: bool = arg(False, "autoencoder first, then a fresh decoder (Li et al. 2019)")
    # The IW log-weights of a batch are kept whole (batch x samples floats); 10^6 is 2,000x the paper's 500.
    iw_samples: int = arg(500, "importance samples for the test NLL (Burda et al.)", within(0, 10 ** 6), resume=True,
                          group="evaluation")
    iw_chunk: int = arg(100, "samples per decoder pass, for bounded memory", COUNT, resume=True)
    mi_samples: int = arg(1, "z draws per test example for mi, mi_full (validation: always 1)", COUNT, resume=True)
    # parsed as train() parses it
    snapshot_iters: str = arg("", 'generator updates after which to record, e.g. "0,200,2000"',
                              parsed(lambda v: all(0 <= int(i) <= INT_MAX for i in v.split(",") if i),
                                     "comma-separated iteration counts >= 0 like 0,200,2000"),
                              group="posterior-mean snapshots for Figure 2 (scalar z only)")
    # The grid on [-20, 20] has 40 / stride + 1 points: 40,001 at the finest (100x the default's), two at
    # the coarsest.
    grid_stride: float = arg(0.1, "stride of the z grid on [-20, 20] for the true posterior mean", within(1e-3, 40))
    trajectory_iters: int = arg(0, "Figure 3: follow one example through the first N generator updates", NONNEG)

# Mode flags in the order of their parts in the mode name ("+" starts a part, else it extends the last): the name,
# implied settings, refusals (of what would train otherwise than named) and the autoencoder's reset (ae_off) read it.
Mode = collections.namedtuple("Mode", "off part method implies excludes needs clash why latent ae_off", defaults=(
    "", False, {}, (), (), "--{} and --{} are alternative {}; pick one", "", True, False))
MODES = {
    "nz": Mode(0),          # not a mode: the latent size, which --lm excludes with every mode that needs a latent
    "lm": Mode(False, "+lm", method=True, implies=dict(nz=0, iw_samples=1), latent=False,      # log p(x) is exact
               clash="--{}: the language-model baseline has no latent; drop --{}"),
    "savae": Mode(False, "+savae", method=True, excludes=("aggressive",), why="remedies"),
    "aggressive": Mode(False, "+aggressive", method=True),
    "inner_steps": Mode(0, "-inner{}", needs=("aggressive",), clash="--{}: a fixed inner-loop budget needs --{}"),
    "rule": Mode("paper", "-{}", needs=("aggressive",), clash="", latent=False),     # inert without it: not refused
    "pretrain_encoder": Mode(False, "+pretrain", method=True, implies=dict(anneal=True, kl_start=0.0, free_bits=0.5),
                             ae_off=True),     # Li et al. 2019 anneal from 0, with free bits
    "anneal": Mode(False, "+anneal", excludes=("cyclical",), why="KL schedules", ae_off=True),
    "warm_up_iters": Mode(0, "{}", needs=("anneal",), clash="--{}: a warm-up length needs --{}", ae_off=True),
    "cyclical": Mode(0, "+cyclical{}", ae_off=True),
    "beta": Mode(1.0, "+beta{:g}"),
    "free_bits": Mode(0.0, "+fb{:g}", ae_off=True),
    "bn_gamma": Mode(0.0, "+bn{:g}"),
    "encoder_lr_mult": Mode(1.0, "+enclr{:g}"),
    "decay_at": Mode("", "+decayat", latent=False, ae_off=True),     # the autoencoder's decays are its own
}
MODES["lm"] = MODES["lm"]._replace(excludes=tuple(f for f, m in MODES.items() if m.latent))

# Every preset names its thread count. The small ones take one: the grids run them two at a time, one
# thread each, and beside another job a second thread costs far more than the little it gains on idle
# cores (README, Presets). The paper's models are large enough to use every core (0: torch's default).
PRESETS = {"text": {
    # App. B.1: 50-d embeddings, 50 hidden units, batch 16; the official config trains <= 50 epochs.
    "synthetic": dict(ni=50, enc_nh=50, dec_nh=50, nz=2, batch_size=16, epochs=50, threads=1),
    # App. B.2 (Yahoo/Yelp): 512-d embeddings, 1024 hidden, nz 32, batch 32.
    "paper": dict(ni=512, enc_nh=1024, dec_nh=1024, nz=32, batch_size=32, epochs=100, threads=0),
    # Sized for 2 CPU cores (ptb, yahoo-small): small enough that the whole text grid runs there,
    # large enough that the plain VAE collapses. 30 epochs is a fixed budget that stops most runs
    # before their fifth lr decay, with validation -ELBO still falling; the paper's protocol is
    # --epochs 200 (a cap: the fifth decay ends the run) --max-test 0 --iw-samples 500 (run_all.sh,
    # protocol). A 3-epoch KL warm-up, the official 10 epochs' share of its 100-epoch budget (Table 9
    # scales the same way).
    "cpu": dict(ni=64, enc_nh=128, dec_nh=128, nz=32, batch_size=32, epochs=30, subset=4000,
                max_vocab=2000, max_len=30, max_test=500, iw_samples=50, mi_samples=20, warm_up=3, threads=1),
    # The cpu model on a corpus the cpu sizing was not made for (a researcher's own, full Yahoo or
    # Yelp): the whole corpus, vocabulary and documents, and the full IW-NLL; only the model is small.
    "cpu-full": dict(ni=64, enc_nh=128, dec_nh=128, nz=32, batch_size=32, epochs=30, mi_samples=20, warm_up=3,
                     threads=1),
    # For tests: a few seconds per run.
    "tiny": dict(ni=16, enc_nh=16, dec_nh=16, nz=2, batch_size=8, epochs=2, subset=64,
                 iw_samples=20, iw_chunk=10, inner_window=3, max_inner_steps=10, threads=1),
}, "image": {
    # App. B.3: ResNet encoder, 13-layer PixelCNN with 64 feature maps, Adam 1e-3, batch 50, lr
    # halved after 20 epochs without improvement; the official image code checks the inner loop
    # every 10 steps and ends aggressive training after 5 epochs without a new best MI.
    "paper": dict(nz=32, enc_nh=64, dec_nh=64, batch_size=50, optim="adam", lr=1e-3, epochs=1000,
                  decay_patience=20, inner_window=10, mi_patience=5, threads=0),
    # Sized for 2 CPU cores (run times in RESULTS.md). mi_patience 2, not the official 5: with 5, a
    # run this short would stay aggressive nearly to its end.
    "cpu": dict(nz=32, enc_nh=32, dec_nh=32, dec_kernels="7,5,3", batch_size=50, optim="adam", lr=1e-3,
                epochs=12, decay_patience=2, inner_window=10, mi_patience=2, subset=3000, max_test=1000,
                iw_samples=50, threads=1),
    "tiny": dict(nz=4, enc_nh=8, dec_nh=8, dec_kernels="5,3", batch_size=10, optim="adam", lr=1e-3,
                 epochs=2, subset=40, iw_samples=10, iw_chunk=5, inner_window=3, max_inner_steps=10, threads=1),
}}
# The datasets the cpu preset's cuts were sized for; every other text corpus defaults to cpu-full, so
# that a researcher's own corpus is never silently shrunk.
DEFAULT_PRESET = {"synthetic": "synthetic", "ptb": "cpu", "yahoo-small": "cpu", "omniglot": "cpu"}
RESUMABLE = {f.name for f in dataclasses.fields(Config) if f.metadata["resume"]}


def may_change_on_resume(name, saved):
    rule = next(f.metadata["resume"] for f in dataclasses.fields(Config) if f.name == name)
    return rule(saved) if callable(rule) else rule


class UsageError(Exception):
    """Bad flag or file; the CLI prints it as one line and exits with code 2."""


class DataMissing(UsageError):
    """The data files of a run are not there (a command that needs only the model goes on without them)."""


def check_flag(name, value, rule):
    """The one-line refusal of a value its rule does not admit: the flag, what was expected, what was given."""
    expected = rule(value)
    if expected:
        raise UsageError(f"--{name.replace('_', '-')}: expected {expected}, got {value!r}")


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_types(overrides):
    """Each override must name a Config field and have its type (an int is a fine float), so the
    rules below never compare a string with a number (configs also come from checkpoints)."""
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for name, value in overrides.items():
        typ = types.get(name)
        if typ is None:
            raise UsageError(f"unknown config field {name!r}")
        if isinstance(value, bool) != (typ is bool) or not isinstance(value, (int, float) if typ is float else typ):
            raise UsageError(f"--{name.replace('_', '-')}: expected {TYPE_NAMES[typ]}, got {value!r}")


def resolve_config(overrides):
    """Defaults <- preset <- explicit overrides (a dict of field -> value), validated: every field by its
    rule, then the rules across fields. Reads no file: the train command reads --decay-at RUN."""
    check_types(overrides)
    data = overrides.get("data", Config.data)
    presets = PRESETS[datalib.kind(data)]
    preset = overrides.get("preset") or DEFAULT_PRESET.get(data, "cpu-full")
    if preset not in presets:
        raise UsageError(f"--preset: unknown preset {preset!r} for {data} (expected one of {', '.join(presets)})")
    implied = {k: v for f, m in MODES.items() if overrides.get(f, m.off) != m.off for k, v in m.implies.items()}
    rule = RULES.get(overrides.get("rule", Config.rule), {})      # an unknown one is refused below
    cfg = Config(**{**presets[preset], **rule, **implied, **overrides, "preset": preset, "data": absolute_data(data)})
    for f in dataclasses.fields(Config):
        if f.metadata["rule"] and not (f.name == "nz" and cfg.lm):
            check_flag(f.name, getattr(cfg, f.name), f.metadata["rule"])
    on = lambda f: getattr(cfg, f) != MODES[f].off
    for f, m in MODES.items():
        wrong = [g for g in m.excludes if on(g)] or [g for g in m.needs if not on(g)]
        if on(f) and wrong and m.clash:
            raise UsageError(m.clash.format(f.replace("_", "-"), ", --".join(wrong).replace("_", "-"), m.why))
    if (cfg.snapshot_iters or cfg.trajectory_iters) and cfg.nz != 1:
        raise UsageError("--snapshot-iters/--trajectory-iters: posterior means need a scalar latent (--nz 1)")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA device is available")
    if cfg.device.startswith("cuda:") and int(cfg.device[5:]) >= torch.cuda.device_count():
        raise UsageError(f"--device {cfg.device}: there are {torch.cuda.device_count()} CUDA devices (0 to "
                         f"{torch.cuda.device_count() - 1})")
    return cfg


def decay_epochs(decay_at):
    """The epochs of a --decay-at value ("never": none), or None where it names none."""
    if decay_at == "never":
        return []
    if not re.fullmatch(r"[1-9]\d{0,9}(,[1-9]\d{0,9})*", decay_at):
        return None
    epochs = [int(e) for e in decay_at.split(",")]
    return epochs if all(a < b for a, b in zip(epochs, epochs[1:])) else None


def mode_name(cfg):
    on = lambda f: getattr(cfg, f) != MODES[f].off
    name = "".join(m.part.format(getattr(cfg, f)) for f, m in MODES.items() if on(f) and all(map(on, m.needs)))
    return name[1:] if any(m.method and on(f) for f, m in MODES.items()) else "basic" + name


def absolute_data(data):
    """`text:PREFIX` with PREFIX absolute, so that a run's config finds its corpus from any directory."""
    return "text:" + os.path.abspath(data[len("text:"):]) if data.startswith("text:") else data


def use_device(cfg):
    """The device to train on, after setting the CPU thread count (small models run faster on one
    thread than on two: their ops are too short to split)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return get_device(cfg)


def get_device(cfg):
    return torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                        "cpu" if cfg.device == "auto" else cfg.device)


# ------------------------------------------------------------------------------------------------
# 2. Models. A VAE exposes encode(x) -> (mu, logvar) and log_px_given_z(x, z) -> (B, S) for z of
# shape (B, S, nz); everything else (objectives, training modes, evaluation) is written against that.

def uniform_init(module, shifted=False):
    """App. B: every weight and bias U(-0.01, 0.01), embeddings U(-0.1, 0.1). App. G's shifted
    initialization adds an offset, U(0.04, 0.06) and U(0, 0.2), so that every encoder output starts
    positive instead of at the origin."""
    (lo, hi), (elo, ehi) = ((0.04, 0.06), (0.0, 0.2)) if shifted else ((-0.01, 0.01), (-0.1, 0.1))
    for p in module.parameters():
        nn.init.uniform_(p, lo, hi)
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, elo, ehi)


class GaussianHead(nn.Module):
    """Features -> (mu, logvar). With gamma > 0 (BN-VAE, Zhu et al. 2020) the means are batch-
    normalized with the fixed scale gamma and a learned shift, so every dimension's batch mean of mu^2
    is at least gamma^2 * var / (var + eps) and E[KL] >= nz * gamma^2 / 2 while the variance var of the
    unnormalized means is well above eps. It is not a guarantee: an encoder can still collapse by
    shrinking var below eps (it happens on yahoo-small: RESULTS.md). eps as BatchNorm's,
    as in Zhu et al.'s code."""

    def __init__(self, nh, nz, gamma=0.0, bias=False, eps=1e-5, momentum=0.1):
        super().__init__()
        self.linear = nn.Linear(nh, 2 * nz, bias=bias)
        self.gamma, self.eps, self.momentum = gamma, eps, momentum
        if gamma:
            self.shift = nn.Parameter(torch.zeros(nz))
            self.register_buffer("running_mean", torch.zeros(nz))
            self.register_buffer("running_var", torch.ones(nz))

    def forward(self, h):
        mu, logvar = self.linear(h).chunk(2, -1)
        if not self.gamma:
            return mu, logvar
        # By hand rather than nn.BatchNorm1d: length buckets can hold a single sentence, where the
        # batch variance is 0 (mu becomes the shift) instead of an error.
        if self.training:
            mean, var = mu.mean(0), mu.var(0, unbiased=False)
            if mu.size(0) > 1:                  # a singleton's zero variance would bias the average
                with torch.no_grad():
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return self.gamma * (mu - mean) / (var + self.eps).sqrt() + self.shift, logvar


class LSTMEncoder(nn.Module):
    """Embedding -> LSTM over <s> ... </s> -> final hidden state -> linear -> (mu, logvar)."""

    def __init__(self, vocab_size, cfg):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.ni)
        self.lstm = nn.LSTM(cfg.ni, cfg.enc_nh, batch_first=True)
        self.head = GaussianHead(cfg.enc_nh, cfg.nz, cfg.bn_gamma)     # no bias, as the official code

    def forward(self, x):
        if not self.head.linear.out_features:         # --lm: no latent, nothing to encode
            return x.new_zeros(x.size(0), 0, dtype=torch.float), x.new_zeros(x.size(0), 0, dtype=torch.float)
        _, (h, _) = self.lstm(self.embed(x))
        return self.head(h[-1])


class LSTMDecoder(nn.Module):
    """Dropped-out embedding with z appended at every step -> LSTM whose initial cell state is a
    linear map of z (hidden state its tanh) -> dropout -> vocabulary logits."""

    def __init__(self, vocab_size, cfg):
        super().__init__()
        # The official decoder embedding sets padding_idx=-1, which silently freezes the last
        # vocabulary entry; batches are never padded, so we use no padding index at all.
        self.embed = nn.Embedding(vocab_size, cfg.ni)
        self.drop_in, self.drop_out = nn.Dropout(cfg.dropout_in), nn.Dropout(cfg.dropout_out)
        self.lstm = nn.LSTM(cfg.ni + cfg.nz, cfg.dec_nh, batch_first=True)
        self.trans_z = nn.Linear(cfg.nz, cfg.dec_nh, bias=False)
        self.pred = nn.Linear(cfg.dec_nh, vocab_size, bias=False)

    def forward(self, x, z):
        """Token-summed log p(x|z): x (B, T) ids with <s>/</s>, z (B, S, nz) -> (B, S)."""
        (B, T), S = x.shape, z.size(1)
        emb = self.drop_in(self.embed(x[:, :-1]))                           # (B, T-1, ni)
        emb = emb.unsqueeze(1).expand(B, S, T - 1, emb.size(-1)).reshape(B * S, T - 1, -1)
        zf = z.reshape(B * S, -1)
        out, _ = self.lstm(torch.cat([emb, zf.unsqueeze(1).expand(-1, T - 1, -1)], -1), self.init_state(zf))
        logits = self.pred(self.drop_out(out))                               # (B*S, T-1, V)
        target = x[:, 1:].unsqueeze(1).expand(B, S, T - 1).reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target, reduction="none")
        return -nll.view(B, S, T - 1).sum(-1)

    def init_state(self, z):
        """LSTM state (h0, c0) for z (N, nz): c0 = trans_z(z), h0 = tanh(c0)."""
        c0 = self.trans_z(z).unsqueeze(0)
        return torch.tanh(c0), c0

    def step(self, tokens, z, state):
        """One step of generation, conditioned as in forward: tokens (N,) and z (N, nz) -> logits of
        the next token (N, V) and the new state."""
        out, state = self.lstm(torch.cat([self.drop_in(self.embed(tokens)), z], -1).unsqueeze(1), state)
        return self.pred(self.drop_out(out[:, 0])), state


class VAE(nn.Module):
    """The interface everything after this section uses: encode(x) -> (mu, logvar) and
    log_px_given_z(x, z) -> (B, S); subclasses add n_targets and elements_per_sample."""

    def encode(self, x):
        return self.encoder(x)

    def log_px_given_z(self, x, z):
        return self.decoder(x, z)


@contextlib.contextmanager
def empty_z_layers():
    """--lm (nz 0): the layers of z are empty by design, and torch warns of initializing them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        yield


class TextVAE(VAE):
    kind = "text"

    def __init__(self, vocab_size, cfg):
        super().__init__()
        self.nz, self.vocab_size = cfg.nz, vocab_size
        with empty_z_layers():
            self.encoder = LSTMEncoder(vocab_size, cfg)
            self.decoder = LSTMDecoder(vocab_size, cfg)
        uniform_init(self, cfg.shifted_init)

    @staticmethod
    def n_targets(x):
        """Predicted tokens in a batch: words + </s> (perplexities and the inner-loop test use it)."""
        return x.size(0) * (x.size(1) - 1)

    def elements_per_sample(self, x):
        """Decoder activations per (example, z sample), to size evaluation chunks."""
        return (x.size(1) - 1) * self.vocab_size

    def uniform_nll(self, x):
        """Nats of guessing every predicted token uniformly (where training starts; divergence is
        measured against it)."""
        return self.n_targets(x) * math.log(self.vocab_size)


class ResBlock(nn.Module):
    """conv3x3(stride) -> BN -> ELU -> conv3x3 -> BN, plus a 1x1 projection shortcut, then ELU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ELU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.elu(self.body(x) + self.skip(x))


class ResNetEncoder(nn.Module):
    """Residual blocks downsampling 28 -> 14 -> 7 -> 4, a 4x4 conv to one feature vector, then
    linear -> (mu, logvar) (App. B.3, after Chen et al. 2017)."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.enc_nh
        self.net = nn.Sequential(ResBlock(1, c, 2), ResBlock(c, c, 2), ResBlock(c, c, 2),
                                 nn.Conv2d(c, 8 * c, 4, bias=False), nn.BatchNorm2d(8 * c), nn.ELU(), nn.Flatten())
        self.head = GaussianHead(8 * c, cfg.nz, cfg.bn_gamma, bias=True)

    def forward(self, x):
        if not self.head.linear.out_features:         # --lm: no latent
            return x.new_zeros(x.size(0), 0), x.new_zeros(x.size(0), 0)
        return self.head(self.net(x))


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only pixels above, and left in the same row: type A excludes the centre
    (first layer), type B includes it. Only the first `masked_in` input channels are masked, so the
    z feature maps concatenated to the image are visible everywhere."""

    def __init__(self, cin, cout, k, mask_type, masked_in=None):
        super().__init__(cin, cout, k, padding=k // 2, bias=False)
        mask = torch.ones_like(self.weight)
        c = k // 2
        rows = slice(None, masked_in)
        mask[:, rows, c, c + (mask_type == "B"):] = 0
        mask[:, rows, c + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, None, padding=self.padding)


class PixelCNNDecoder(nn.Module):
    """Masked conv layers (kernels from cfg.dec_kernels, dec_nh maps; the first type A, the rest type
    B), each followed by BN and ELU, then a 1x1 conv to Bernoulli logits. z enters as 4 feature maps
    (a linear map of z) concatenated to the image. The paper describes plain layers; the official
    code uses residual bottleneck blocks with extra skip paths, which we leave out for clarity."""

    def __init__(self, cfg, z_maps=4):
        super().__init__()
        self.z_maps = z_maps
        self.z_to_maps = nn.Linear(cfg.nz, z_maps * 28 * 28)
        kernels = [int(k) for k in cfg.dec_kernels.split(",")]
        layers, cin = [], 1 + z_maps
        for i, k in enumerate(kernels):
            layers += [MaskedConv2d(cin, cfg.dec_nh, k, "A" if i == 0 else "B", 1 if i == 0 else None),
                       nn.BatchNorm2d(cfg.dec_nh), nn.ELU()]
            cin = cfg.dec_nh
        self.net = nn.Sequential(*layers, nn.Conv2d(cfg.dec_nh, 1, 1))

    def logits(self, x, z):
        """x (N, 1, 28, 28), z (N, nz) -> Bernoulli logits (N, 1, 28, 28)."""
        maps = self.z_to_maps(z).view(-1, self.z_maps, 28, 28)
        return self.net(torch.cat([x, maps], 1))

    def forward(self, x, z):
        """Pixel-summed log p(x|z): x (B, 1, 28, 28) binary, z (B, S, nz) -> (B, S)."""
        B, S = z.shape[:2]
        xs = x.unsqueeze(1).expand(B, S, *x.shape[1:]).reshape(B * S, *x.shape[1:])
        logits = self.logits(xs, z.reshape(B * S, -1))
        ll = -F.binary_cross_entropy_with_logits(logits, xs, reduction="none")
        return ll.view(B, S, -1).sum(-1)


class ImageVAE(VAE):
    kind = "image"

    def __init__(self, cfg):
        super().__init__()
        self.nz = cfg.nz
        with empty_z_layers():
            self.encoder = ResNetEncoder(cfg)
            self.decoder = PixelCNNDecoder(cfg)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):        # He init for the convolutions, as the official code
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    @staticmethod
    def n_targets(x):
        """Pixels in a batch (the inner-loop test compares per-pixel losses)."""
        return x[0].numel() * x.size(0)

    def elements_per_sample(self, x):
        return 2 * x[0].numel() * self.decoder.net[1].num_features

    def uniform_nll(self, x):
        """Nats of guessing every pixel with probability 1/2."""
        return self.n_targets(x) * math.log(2)


def build_model(cfg, corpus):
    return TextVAE(corpus.vocab_size, cfg) if corpus.kind == "text" else ImageVAE(cfg)


# ------------------------------------------------------------------------------------------------
# 3. Objectives & estimators. Prior p(z) = N(0, I); q(z|x) diagonal Gaussian.

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_dims(mu, logvar):
    """Analytic KL(N(mu, exp(logvar)) || N(0, I)) of each latent dimension: the one formula that
    training (free bits clamps it per dimension) and evaluation share."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def gaussian_kl(mu, logvar):
    """gaussian_kl_dims summed over the last dimension."""
    return gaussian_kl_dims(mu, logvar).sum(-1)


def log_gaussian(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)) summed over the last dimension (broadcasts)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def sample_z(mu, logvar, nsamples=1, gen=None):
    """Reparameterized samples (B, S, nz)."""
    eps = torch.randn(mu.size(0), nsamples, mu.size(1), device=mu.device, dtype=mu.dtype, generator=gen)
    return mu.unsqueeze(1) + eps * (0.5 * logvar).exp().unsqueeze(1)


def log_aggregate_posterior(z, mu, logvar, chunk=None):
    """log q(z_i) with q(z) = (1/N) sum_j q(z|x_j), the mixture over all N encodings.
    Log-sum-exp over j, computed in row chunks so memory stays O(chunk * N * nz)."""
    n, nz = mu.shape
    chunk = chunk or max(1, 2 ** 22 // max(1, n * nz))
    out = [torch.logsumexp(log_gaussian(z[i:i + chunk, None], mu[None], logvar[None]), 1)
           for i in range(0, z.size(0), chunk)]
    return torch.cat(out) - math.log(n)


def mutual_info(mu, logvar, z, analytic=True):
    """Eq. 5: I_q = E_x KL(q(z|x)||p(z)) - KL(q(z)||p(z)) = E[log q(z|x)] - E[log q(z)], with one
    sample z_i ~ q(z|x_i) per row and q(z) the mixture over the rows (so the estimate is at most
    log N). analytic=True uses the closed-form entropy of q(z|x) as the official code does;
    analytic=False uses log q(z_i|x_i) at the same samples, for which the identity
    mean KL_mc = MI + aggregate KL holds exactly."""
    if analytic:
        log_qzx = -0.5 * (mu.size(1) * LOG_2PI + (1 + logvar).sum(-1))
    else:
        log_qzx = log_gaussian(z, mu, logvar)
    return (log_qzx - log_aggregate_posterior(z, mu, logvar)).mean()


def mutual_info_draws(mu, logvar, z):
    """mutual_info averaged over S draws per row, z: (N, S, nz); each draw is mixed over the rows."""
    return torch.stack([mutual_info(mu, logvar, z[:, s]) for s in range(z.size(1))]).mean()


def active_units(mu_all, threshold=0.01):
    """Number of dimensions d with Var_x(E_q[z_d|x]) > threshold (Burda et al. 2016)."""
    if mu_all.size(0) < 2 or not mu_all.numel():      # one example has no variance; --lm has no latent
        return 0
    return int((mu_all.var(0) > threshold).sum())


def unpadded(model, x):
    """x, refused where a text batch holds <pad>: the models read every position as a word (batches are
    length buckets, never padded), so a padded batch would give a wrong number without a word."""
    if model.kind == "text" and bool((x == datalib.SPECIALS.index(datalib.PAD)).any()):
        raise UsageError("a text batch holds <pad> (id 0), which the model would read as a word: batch "
                         "documents by length (datalib.batches), or pass sentences to lagvae.nll, encode or "
                         "reconstruct, which do")
    return x


def iw_log_weights(model, x, k, chunk=100, gen=None, posterior=None):
    """(B, K) log importance weights log p(z_k) + log p(x|z_k) - log q(z_k|x), z_k ~ q(z|x). Samples are
    drawn in chunks so decoder memory stays bounded; only the log-weights are kept.
    posterior: (mu, logvar) to use instead of the encoder's (SA-VAE's refined q)."""
    unpadded(model, x)
    mu, logvar = posterior if posterior is not None else model.encode(x)
    budget = max(1, 2 ** 25 // (x.size(0) * model.elements_per_sample(x)))
    log_w = []
    for s in range(0, k, min(chunk, budget)):
        z = sample_z(mu, logvar, min(chunk, budget, k - s), gen)
        log_w.append(log_gaussian(z, torch.zeros_like(z), torch.zeros_like(z))
                     + model.log_px_given_z(x, z) - log_gaussian(z, mu.unsqueeze(1), logvar.unsqueeze(1)))
    return torch.cat(log_w, 1)


def iw_nll(model, x, k, chunk=100, gen=None, posterior=None):
    """Importance-weighted -log p(x) per example (Burda et al. 2016), K samples from q(z|x):
    log p(x) ~ logsumexp_k [log p(z_k) + log p(x|z_k) - log q(z_k|x)] - log K."""
    # Eq. 1: p(x) = E_q[p(x|z) p(z) / q(z|x)], estimated by importance sampling.
    return -(torch.logsumexp(iw_log_weights(model, x, k, chunk, gen, posterior), 1) - math.log(k))


def iw_nll_groups(log_w, k):
    """(B, G) K-sample bounds of the G = K_total / K disjoint groups of K log-weights each: one set of
    draws gives the bound at every K that divides it, and its spread over the groups."""
    groups = log_w.view(log_w.size(0), -1, k)
    return -(torch.logsumexp(groups, 2) - math.log(k))


@torch.no_grad()
def posterior_mean_grid(model, x, zmin=-20.0, zmax=20.0, stride=0.1, chunk=64):
    """E_{p(z|x)}[z] of the model posterior (the p(z|x) that q must match, Eq. 3) for a scalar latent
    by discretizing z on [zmin, zmax] (App. A, Eq. 6): weights
    softmax_k(log p(z_k) + log p(x|z_k)), a log-sum-exp normalization over the grid."""
    grid = torch.arange(zmin, zmax + stride / 2, stride, device=x.device, dtype=torch.get_default_dtype())
    out = []
    for i in range(0, x.size(0), chunk):
        xb = x[i:i + chunk]
        log_joint = torch.cat([model.log_px_given_z(xb, grid[j:j + 64].view(1, -1, 1).expand(xb.size(0), -1, 1))
                               for j in range(0, len(grid), 64)], 1) - 0.5 * grid ** 2
        out.append((torch.softmax(log_joint, 1) * grid).sum(1))
    return torch.cat(out)


SVI_MAX_NORM = 5.0      # SA-VAE's bound on each refinement gradient and on each gradient flowing back


def clip_norm(g):
    return g * (SVI_MAX_NORM / g.norm().clamp(min=SVI_MAX_NORM))


def svi_refine(model, x, mu, logvar, cfg, kl_weight=1.0, gen=None):
    """SA-VAE (Kim et al. 2018): svi_steps of gradient descent with momentum 0.5 on the batch-mean
    -ELBO w.r.t. (mu, logvar), each gradient clipped to norm 5, starting from the encoder's output.

    In training we backpropagate through the steps with autograd (create_graph), so the decoder gets
    its second-order terms and the encoder learns through the refinement; the original uses
    finite-difference Hessian-vector products (r = 1e-5), which adds error and needs replayed noise
    and dropout masks. Like the original, the gradient flowing back into each iterate (mu_k,
    logvar_k) is clipped to norm 5: the unrolled steps' Jacobian can blow up where the decoder is
    sharply curved, and unclipped the backward pass blew up on yahoo-small, which the joint clip
    turned into steps along the blow-up alone (RESULTS.md). Below the clip the
    gradient is exact. Like the original, the objective is the batch mean, so each example's
    effective step is svi_lr / B. Outside training the steps are plain (no graph is kept)."""
    exact = torch.is_grad_enabled() and model.training
    # oneDNN's LSTM double backward is assembled from many small ops: a training step is cheaper
    # without oneDNN (`bench`, RESULTS.md).
    # allow_tf32=None leaves that flag alone: flags() otherwise sets it and torch warns on CPU builds.
    with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=not exact, allow_tf32=None):
        v_mu = v_lv = 0.0
        for _ in range(cfg.svi_steps):
            if not exact:
                mu, logvar = mu.detach().requires_grad_(), logvar.detach().requires_grad_()
            loss = (-model.log_px_given_z(x, sample_z(mu, logvar, 1, gen)).squeeze(1)
                    + kl_weight * gaussian_kl(mu, logvar)).mean()
            g_mu, g_lv = torch.autograd.grad(loss, (mu, logvar), create_graph=exact)
            if exact:       # after autograd.grad, whose pass would run the hooks too
                mu.register_hook(clip_norm), logvar.register_hook(clip_norm)
            v_mu, v_lv = 0.5 * v_mu - clip_norm(g_mu), 0.5 * v_lv - clip_norm(g_lv)
            mu, logvar = mu + cfg.svi_lr * v_mu, logvar + cfg.svi_lr * v_lv
        if exact:
            mu.register_hook(clip_norm), logvar.register_hook(clip_norm)
    return (mu, logvar) if exact else (mu.detach(), logvar.detach())


def refine(model, x, mu, logvar, cfg, kl_weight=1.0, gen=None):
    """The encoder's (mu, logvar), refined per batch for SA-VAE and unchanged otherwise."""
    if not cfg.savae:
        return mu, logvar
    with torch.backends.cudnn.flags(enabled=False):      # cuDNN's LSTM has no double backward
        return svi_refine(model, x, mu, logvar, cfg, kl_weight, gen)


def infer(model, x, cfg, kl_weight=1.0, gen=None):
    """q(z|x)'s (mu, logvar) for training and evaluation."""
    return refine(model, x, *model.encode(x), cfg, kl_weight, gen)


def objective(model, x, cfg, kl_weight=1.0):
    """Batch loss to minimise (mean -ELBO with the KL weighted, or free bits: sum over dimensions of
    max(lambda, batch-mean KL_d), Kingma et al. 2016), plus per-example rec and kl for logging."""
    mu, logvar = infer(model, x, cfg, kl_weight)
    # Eq. 2: ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); we minimise its negative.
    rec = -model.log_px_given_z(x, sample_z(mu, logvar)).squeeze(1)
    kl_d = gaussian_kl_dims(mu, logvar)
    kl_term = kl_d.mean(0).clamp(min=cfg.free_bits).sum() if cfg.free_bits else kl_d.sum(-1).mean()
    return rec.mean() + kl_weight * kl_term, rec, kl_d.sum(-1)


def kl_weight_at(cfg, it, n_batches):
    """KL weight at training iteration it (1-based): beta times the schedule, which is linear from
    kl_start to 1 over the warm-up (App. B), or M cycles that each ramp from 0 to 1 over their first
    half and then hold (Fu et al. 2019), or constant 1. The official code counts the warm-up in
    N/B batches; we count the batches actually run."""
    if cfg.cyclical:
        period = cfg.epochs * n_batches / cfg.cyclical
        ramp = min(1.0, ((it - 1) % period) / (period / 2))
    elif cfg.anneal:
        ramp = min(1.0, cfg.kl_start + (1 - cfg.kl_start) * it / (cfg.warm_up_iters or cfg.warm_up * n_batches))
    else:
        ramp = 1.0
    return cfg.beta * ramp


def in_eval_mode(fn):
    """Run fn(model, ...) in eval mode (no dropout masks) and without a graph, then give the model
    back in the mode it was in: evaluation, decoding and snapshots happen in the middle of training."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


# ------------------------------------------------------------------------------------------------
# 4. Runs: the run directory and its files, checkpoints and --resume, locks, signals, the start banner.
# Every file of a run is written atomically or counted in last.pt, so after any crash they agree.

def mmss(seconds):
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


class Progress:
    """Lines through a long pass over batches (an epoch, an evaluation), one every cfg.progress_every
    seconds (0 or --quiet: none), the same on a terminal as in a nohup log or CI, so that a long
    aggressive epoch or a minutes-long IW-NLL is never silent: where the pass is, how long it took and
    the time left at its pace; with `epochs_left`, also at most left in the run, were every epoch left
    as long (the fifth lr decay usually ends it sooner)."""

    def __init__(self, cfg, head, total, done=0, epochs_left=None):
        """total: the pass's batches; done: how many of them ran before a resume."""
        self.on, self.every = cfg.progress_every > 0 and not cfg.quiet, cfg.progress_every
        self.head, self.total, self.epochs_left = head, total, epochs_left
        self.batch = self.done = done
        self.start = self.last = time.time()

    def step(self, detail=lambda: ""):
        """After a batch; detail(): what the caller adds to a line, asked only when one is printed."""
        self.batch += 1
        now = time.time()
        if not self.on or now - self.last < self.every:
            return
        self.last = now
        per_batch = (now - self.start) / (self.batch - self.done)
        eta = per_batch * (self.total - self.batch)
        run = "" if self.epochs_left is None else f", run ≤ {mmss(eta + self.epochs_left * per_batch * self.total)}"
        print(f"{self.head} | batch {self.batch}/{self.total} | {detail()}{mmss(now - self.start)} elapsed, "
              f"ETA {mmss(eta)}{run}", file=sys.stderr, flush=True)


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir(cfg):
    """--out, or a folder directly under runs/ (where `table runs/*` finds it) named by what tells the run
    apart: the data (a `text:PREFIX` corpus by its own name, not its path, so no `..` leads out of runs/),
    the preset and latent size where they are not the defaults, the mode and the seed."""
    data = "text:" + Path(cfg.data[len("text:"):]).name if cfg.data.startswith("text:") else cfg.data
    preset = cfg.preset if cfg.preset != DEFAULT_PRESET.get(cfg.data, "cpu-full") else ""
    nz = f"nz{cfg.nz}" if not cfg.lm and cfg.nz != PRESETS[datalib.kind(cfg.data)][cfg.preset].get("nz", Config.nz) else ""
    return Path(cfg.out or "runs/" + "-".join(p for p in (data, preset, nz, mode_name(cfg), f"s{cfg.seed}") if p))


def environment():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "processor": processor(), "git_commit": commit or None}


def processor():
    """The CPU's model name and whether it has AVX-512: the same seed takes another trajectory on
    another processor (its float kernels differ), so a run records where it ran."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    field = lambda key: next((line.split(":", 1)[1].strip() for line in info.splitlines()
                              if line.split(":", 1)[0].strip() == key), None)
    # A VM may name only the vendor ("AMD EPYC"); family and model tell its generations apart.
    detail = [f"family {field('cpu family')} model {field('model')}"] * (field("cpu family") is not None)
    detail += ["AVX-512"] * (" avx512f" in info)
    name = field("model name") or platform.processor() or "unknown"
    return name + (f" ({', '.join(detail)})" if detail else "")


def load_data(cfg, generate=True):
    """cfg's dataset; generate=False: synthetic data must already be there (a checkpoint's data is found,
    not made anew under whatever --data-dir says)."""
    try:
        return datalib.load(cfg.data, cfg.data_dir or None, cfg.subset, cfg.max_vocab, cfg.max_len, generate)
    except datalib.MissingData as e:
        raise DataMissing(str(e)) from None
    except datalib.DataError as e:
        raise UsageError(str(e)) from None


RUN_FILES = ("result.json", "last.pt", "epoch.pt", "model.pt", "log.jsonl", "snapshots.jsonl", "trajectory.jsonl",
             "samples.png", "samples.txt", "config.json")     # removed in this order: config.json goes last


APPENDED = ("log.jsonl", "snapshots.jsonl", "trajectory.jsonl")      # the run files that grow by rows


@contextlib.contextmanager
def run_directory(cfg):
    """The run directory, locked against a second writer for as long as this run lasts (flock: the
    lock goes with the process however it ends, so a killed run never leaves it stuck). A directory
    that holds a run is refused unless resuming (with the same config) or overwriting, and an
    overwrite removes every file of the old run first, so nothing stale is mixed into the new one."""
    out = run_dir(cfg)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; expected a run directory")
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "--out"):
        old = [f for f in RUN_FILES if (out / f).exists()] + ["pretrain/"] * (out / "pretrain").exists()
        if old and cfg.resume:
            check_resume_config(out, cfg, old)
        elif old and cfg.overwrite:
            for f in [*RUN_FILES[:-1], *(f.name for p in ("*.tmp", "latents.*.npz") for f in out.glob(p)), RUN_FILES[-1]]:
                (out / f).unlink(missing_ok=True)
            shutil.rmtree(out / "pretrain", ignore_errors=True)
        elif old:
            raise UsageError(f"--out {out}: holds {refusal_detail(out, cfg, old)}")
        yield out


def refusal_detail(out, cfg, old):
    """What the run in `out` is and where this one may go: --resume is offered only where it would
    continue that run, never where its settings differ."""
    try:
        changed = settings_changed(read_run_config(out / "config.json", "--out"), cfg)
    except UsageError:      # no readable config: nothing tells whether --resume would fit
        changed = None
    new = f"--out DIR for {'this' if changed else 'a new'} run"
    if changed:
        return (f"a run of other settings ({'; '.join(changed)}); give this one its own directory with {new}, or "
                f"--overwrite to replace that one")
    return (f"a run ({', '.join(old)}); add --resume to continue it, {new} beside it, or --overwrite to "
            f"replace it")


def nofollow(path, flags):
    """An opener for open(): a run's own files are never symbolic links, so one planted in the run
    folder is refused instead of followed to whatever it points at."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{path}: is a symbolic link; a run's files are never links, so it is not followed "
                             f"(remove it)") from None
        raise


@contextlib.contextmanager
def run_lock(out, flag):
    """The run directory's lock (flock: it goes with the process however it ends, so a killed run
    never leaves it stuck), refused while another process holds it."""
    with open(out / ".lock", "a", opener=nofollow) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{flag} {out}: another lagvae process is writing this run directory") from None
        yield


def resumable(out):
    """Whether --resume continues from last.pt. A run killed before its first checkpoint has nothing to
    lose and starts afresh; one whose training left records but no last.pt is refused, not retrained."""
    if (out / "last.pt").is_file():
        return True
    left = [f for f in ("model.pt", "epoch.pt", "result.json") if (out / f).exists()]
    rows = (out / "log.jsonl").read_bytes().splitlines() if (out / "log.jsonl").is_file() else []
    left += ["log.jsonl rows"] * any(b'"diverged":' not in r for r in rows)     # a first epoch that diverged is no loss
    if left:
        hint = "rename epoch.pt (the last validated epoch) to last.pt" if "epoch.pt" in left else "restore last.pt"
        raise UsageError(f"--resume: {out} has no last.pt but holds {', '.join(left)} of training, whose state is "
                         f"lost; {hint}, or start again with --overwrite")
    return False


def read_run_config(path, flag):
    """The config object of a run's config.json; one line naming `flag` and the file when it is none."""
    try:
        saved = json.loads(Path(path).read_text())["config"]
        if not isinstance(saved, dict):
            raise TypeError(f"'config' is {reprlib.repr(saved)}, expected an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{flag} {path}: not a lagvae run config ({e})") from None
    return saved


def settings_changed(saved, cfg):
    """'--flag old -> new' of each field that cfg sets otherwise than the saved config and that --resume
    may not change (a relative text:PREFIX of an older run is the corpus it names from here)."""
    saved = {**saved, **({"data": absolute_data(saved["data"])} if isinstance(saved.get("data"), str) else {})}
    return [f"--{k.replace('_', '-')} {saved.get(k, '(unset)')} -> {v}" for k, v in asdict(cfg).items()
            if not may_change_on_resume(k, saved) and saved.get(k, getattr(Config, k)) != v]


def check_resume_config(out, cfg, old):
    """A run's files may be continued only by the settings that made them (config.json says which)."""
    if not (out / "config.json").exists():
        raise UsageError(f"--resume: {out} holds {', '.join(old)} but no config.json, so nothing says which "
                         f"settings made them; restore config.json or start again with --overwrite")
    saved = read_run_config(out / "config.json", "--resume")
    changed = settings_changed(saved, cfg)
    if changed:
        may = [k for k in sorted(RESUMABLE - {"resume"}) if may_change_on_resume(k, saved)]
        raise UsageError(f"--resume: {out} was trained with other settings ({'; '.join(changed)}); only "
                         f"{', '.join('--' + k.replace('_', '-') for k in may)} may change"
                         + (" (not --epochs: the cycles of --cyclical are fractions of it)" if "epochs" not in may else ""))


def json_object(text):
    """The JSON object in `text`; any other JSON value is the error record_of turns into one line."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError(f"{reprlib.repr(record)} is not a JSON object")
    return record


def read_jsonl(path):
    """The records of a JSON-lines file, each an object (path:line names one that is not)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not readable as JSON lines ({e})") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records += [json_object(line)] if line else []
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:
            raise UsageError(f"{path}:{n}: {e}") from None
    return records


def decays_of_run(run):
    """A finished run's decay epochs as a --decay-at value: the epochs after which its lr fell, and its
    last epoch where the decays ended it (it stopped short of --epochs)."""
    if not (run / "result.json").is_file():
        raise UsageError(f"--decay-at {run}: not a finished run (no result.json), so its decays are not all known")
    try:
        saved = json.loads((run / "config.json").read_text())["config"]
        rows = read_jsonl(run / "log.jsonl")
        epochs = [a["epoch"] for a, b in zip(rows, rows[1:]) if b["lr"] < a["lr"]]
        epochs += [rows[-1]["epoch"]] if rows and len(rows) < saved["epochs"] else []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--decay-at {run}: no config.json with epochs and log.jsonl with epoch and lr "
                         f"({e})") from None
    return ",".join(map(str, epochs)) or "never"


def atomic_save(obj, path, write=None):
    """Write to a temporary file, flush it to disk and rename, so that a kill or a power cut leaves the
    old file or the new one, never half of one. The bytes are made in memory first, so that a full
    disk is the OS's own error, one line naming the file and the cause (torch.save names neither). A
    stale temporary file (or a link under its name) is removed, never written through."""
    tmp = Path(str(path) + ".tmp")
    buf = io.BytesIO()
    (write or torch.save)(obj, buf)
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "xb", opener=nofollow) as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(Path(path).parent, os.O_RDONLY)      # the rename itself reaches the disk too
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path} ({e.strerror or e})") from None


def append_row(path, row):
    """One JSON row at the end of an appended run file; a full disk is one line naming the file."""
    try:
        with open(path, "a", opener=nofollow) as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror or e})") from None


def write_atomic(path, data):
    """Bytes to `path` through atomic_save."""
    atomic_save(data, path, lambda d, f: f.write(d))


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2).encode())


def fingerprint(examples):
    """sha256 of a split as the model sees it (token ids or pixels, in order)."""
    h = hashlib.sha256()
    for x in ([examples] if torch.is_tensor(examples) else examples):
        h.update(np.int64(x.numel()).tobytes())
        h.update(x.cpu().numpy().tobytes())
    return h.hexdigest()


def data_identity(corpus):
    """What a model needs to stand alone: the words of its ids (text), the special tokens, and
    fingerprints of the data it was trained and tested on, to tell later data apart. Hashed once per
    corpus (a full corpus takes a while), not at every new best epoch."""
    if not hasattr(corpus, "identity"):
        corpus.identity = {"vocab": getattr(corpus, "vocab", None),
                           "specials": datalib.SPECIALS if corpus.kind == "text" else None,
                           "fingerprints": {split: fingerprint(corpus.splits[split]) for split in ("train", "test")}}
    return corpus.identity


# The layout of last.pt, epoch.pt and model.pt, written into each as "version"; a file of another version is
# refused in one line, never read by guessing at its layout. The runs written before the version key (the grid
# of commit fcf27fc) have version 1's layout: a file without the key that holds every field of its kind is one.
# Older layouts (a last.pt without row counts, a model.pt without its vocabulary or data fingerprints) are
# refused on purpose: the lagvae that wrote them reads them.
CHECKPOINT_VERSION = 1
LAST_FIELDS = ("model", "opts", "state", "rng", "torch_rng", "cuda_rng", "rows", "threads", "vocab", "specials",
               "fingerprints")
MODEL_FIELDS = ("config", "model", "vocab_size", "epoch", "vocab", "specials", "fingerprints")


def save_last(path, model, opts, state, rng, device, identity):
    """The rules are stored as plain dicts, so the file loads whichever module wrote it (__main__ or not),
    and with weights_only. `rows`: how many rows of each appended file belong to this state, so a resume
    cuts each to exactly those, whatever was appended between this checkpoint and a crash. `identity`
    (data_identity): the data trained on, which a resume must train on too; `threads`: another count
    splits float sums otherwise, so a resume says when the numbers stop being exact."""
    rows = {f: len((path.parent / f).read_bytes().splitlines()) for f in APPENDED if (path.parent / f).is_file()}
    atomic_save({"version": CHECKPOINT_VERSION, "model": model.state_dict(),
                 "opts": {k: o.state_dict() for k, o in opts.items()}, "state": state.state_dict(),
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                 "rows": rows, "threads": torch.get_num_threads(), **identity}, path)


def save_model(path, cfg, model, epoch, identity):
    """A best model (model.pt): its config, its weights and what it needs to stand alone (data_identity)."""
    vocab_size = len(identity["vocab"]) if identity["vocab"] is not None else None
    atomic_save({"version": CHECKPOINT_VERSION, "config": asdict(cfg), "model": model.state_dict(),
                 "vocab_size": vocab_size, "epoch": epoch, **identity}, path)


def keep_rows(out, counts, last):
    """Cut each appended file to the rows `last` counts, once every file has been checked: fewer rows,
    or a torn row among them, means the run's files disagree with last.pt."""
    kept = {}
    for name, n in counts.items():
        path, disagree = out / name, f"the run's files disagree (restore {name} or start again with --overwrite)"
        try:
            lines = path.read_bytes().splitlines()[:n]
        except OSError as e:
            raise UsageError(f"--resume: {path}: {e.strerror}; {last} expects {n} rows there") from None
        if len(lines) < n:
            raise UsageError(f"--resume: {path} has {len(lines)} rows but {last} was saved after {n}; {disagree}")
        for i, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                raise UsageError(f"--resume: {path}:{i}: not a JSON row, though {last} counts it; {disagree}") from None
        kept[path] = lines
    for path, lines in kept.items():
        write_atomic(path, b"".join(line + b"\n" for line in lines))


def keep_good_epoch(out):
    """Keep the checkpoint of the epoch that just validated as epoch.pt (a hard link: no copy), so that a
    divergence found at the next validation can go back to it past the batch checkpoints between."""
    tmp = out / "epoch.pt.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(out / "last.pt", tmp)
    except OSError:                 # a file system without hard links
        shutil.copyfile(out / "last.pt", tmp)
    os.replace(tmp, out / "epoch.pt")


def load_last(out, rng, device, corpus):
    """The checkpoint in <out>/last.pt, checked (its version, and the data: a resumed run must train on
    the data it started on), with the RNGs put back to its state; the training loop restores the rest."""
    last = out / "last.pt"
    bad = lambda why: UsageError(f"--resume: cannot continue from {last} ({why})")
    ck = checked(load_pt(last, device, bad), LAST_FIELDS, bad, "finish the run with the lagvae that wrote it (its "
                 "config.json names the git commit) or start again with --overwrite")
    now = data_identity(corpus)
    what = ("vocabulary" if ck["vocab"] != now["vocab"] else
            "training data" if ck["fingerprints"]["train"] != now["fingerprints"]["train"] else None)
    if what:
        raise UsageError(f"--resume: the {what} is not the one {out} was trained on (other files under "
                         f"--data-dir?); resume it on its own data")
    rng.bit_generator.state = ck["rng"]
    torch.set_rng_state(ck["torch_rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return ck


def short_reason(e):
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def load_pt(path, device, bad):
    """The dict of tensors and plain data in a .pt file, unpickled with weights_only: a checkpoint is
    data, and a crafted one must not run the code it carries (a model file is what researchers download
    and pass on). bad(why) makes the error that names the file as its caller knows it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise bad(short_reason(e)) from None
        call = re.search(r"GLOBAL (\S+)", str(e))
        raise bad(f"it holds {'a call of ' + call[1] if call else 'objects'} besides tensors and plain data, which "
                  f"no lagvae checkpoint does; refused unread, so that no code in it runs") from None
    except Exception as e:          # truncated, garbage, another format: unpickling fails in many ways
        raise bad(short_reason(e)) from None


def checked(ck, fields, bad, redo):
    """ck if it is a checkpoint of this version holding `fields`, else bad(why): one of the other kind
    (last.pt holds training state, model.pt does not) is named as such, one of another version is
    refused with `redo`, what to do instead."""
    if not isinstance(ck, dict) or "model" not in ck:       # not a checkpoint of any lagvae: say what it lacks
        raise bad(f"no {', '.join(k for k in fields if not isinstance(ck, dict) or k not in ck)}")
    if ("state" in ck) != ("state" in fields):
        raise bad("it holds training state: a last.pt?" if "state" in ck else "it holds no training state: a model.pt?")
    # unversioned: version 1 only with all of its fields, the data's fingerprints among them (a model that an
    # older lagvae saved from a file without them has the keys but None in them)
    v1 = all(k in ck for k in fields) and ck["fingerprints"] is not None
    version = ck.get("version", CHECKPOINT_VERSION if v1 else None)
    if type(version) is not int or version != CHECKPOINT_VERSION:
        raise bad(f"checkpoint format {'older, without a version' if version is None else repr(version)}; this "
                  f"lagvae reads version {CHECKPOINT_VERSION}: {redo}")
    missing = [k for k in fields if k not in ck]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    return ck


def load_best(path, device):
    """A best model the run wrote (model.pt), or one line naming it when it cannot be read or is not one
    (a last.pt copied over it holds weights too, of another epoch)."""
    bad = lambda why: UsageError(f"{path}: not a best model of a run ({why}); restore it or retrain with --overwrite")
    return checked(load_pt(path, device, bad), MODEL_FIELDS, bad, "read it with the lagvae that wrote it")


def banner(cfg, out, device, corpus, model, resumed=None, threads=None):
    """What a run is about to do, before its first batch: where, on what, and every cut of the data;
    resumed: the state it continues, written with `threads` CPU threads."""
    n = {split: len(corpus.splits[split]) for split in ("train", "valid", "test")}
    unit = "documents" if corpus.kind == "text" else "images"
    lines = [f"run {out} | {device}, {torch.get_num_threads()} thread(s) | --preset {cfg.preset} | mode "
             f"{mode_name(cfg)} | seed {cfg.seed}",
             f"data {cfg.data}: train {n['train']:,} / valid {n['valid']:,} / test {n['test']:,} {unit}"
             + (f" | vocabulary {corpus.vocab_size:,} | documents "
                + (f"up to {cfg.max_len} tokens" if cfg.max_len else "of any length") if corpus.kind == "text" else "")
             + f" | {sum(p.numel() for p in model.parameters()):,} parameters"]
    preset = PRESETS[datalib.kind(cfg.data)][cfg.preset]
    via = lambda f: f"--{f.replace('_', '-')} {getattr(cfg, f)}" + (f" from --preset {cfg.preset}"
                                                                      if preset.get(f) == getattr(cfg, f) else "")
    stats = getattr(corpus, "stats", {})
    cuts = [f"{split} {n[split]:,} of {stats[split]['documents']:,} {unit} ({via('subset')})"
            for split in ("train", "valid", "test") if stats.get(split, {}).get("documents", 0) > n[split]]
    if stats.get("train", {}).get("words", 0) > getattr(corpus, "vocab_size", 0):
        cuts.append(f"vocabulary {corpus.vocab_size:,} of {stats['train']['words']:,} words ({via('max_vocab')})")
    cut_docs = {split: stats.get(split, {}).get("truncated", 0) for split in n}
    if any(cut_docs.values()):
        counts = ", ".join(f"{k:,} {split}" for split, k in cut_docs.items())
        cuts.append(f"{counts} {unit} cut to {cfg.max_len} tokens ({via('max_len')})")
    blank = {split: stats.get(split, {}).get("empty", 0) for split in n}
    if any(blank.values()):       # a blank line is no document: the counts above are of the lines with words
        cuts.append(f"blank lines skipped: {', '.join(f'{k:,} {split}' for split, k in blank.items())}")
    if cfg.max_test and cfg.max_test < n["test"]:
        cuts.append(f"test evaluated on its first {cfg.max_test:,} {unit} ({via('max_test')})")
    if cfg.iw_samples and cfg.iw_samples < 500 and not cfg.lm:
        cuts.append(f"IW-NLL with {cfg.iw_samples} samples, the paper 500 ({via('iw_samples')})")
    lines.append("cut: " + "; ".join(cuts) if cuts else "cut: nothing (whole corpus, vocabulary and documents)")
    if resumed:
        where = (f"epoch {resumed.epoch} batch {resumed.current.batch}" if resumed.current is not None
                 else f"the end of epoch {resumed.epoch}")
        lines.append(f"resuming from {where}")
        if threads and threads != torch.get_num_threads():
            lines.append(f"note: last.pt was written with {threads} thread(s), this resume runs "
                         f"{torch.get_num_threads()}: float sums split otherwise, so from here the numbers differ "
                         f"from a run never stopped in their last digits (same --threads keeps the resume exact)")
    elif cfg.resume:
        lines.append("resuming: no last.pt (stopped before its first checkpoint), so starting afresh")
    return lines


class Interrupted(Exception):
    """SIGINT or SIGTERM reached a run, which saved its state at a batch boundary and stopped."""

    def __init__(self, signum, where):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at {where}; last.pt holds that point, "
                         f"continue with --resume")
        self.exit_code = 128 + signum


class StopRequest:
    """The signal handler: it only notes the signal, and the batch loop saves and stops at the next
    batch boundary (a scheduler's SIGTERM, e.g. SLURM's --signal before preemption, loses nothing). A
    second Ctrl-C exits at once."""
    signum = None

    def __call__(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(128 + signum)
        self.signum = signum

    def check(self, where):
        if self.signum is not None:
            raise Interrupted(self.signum, where)


STOP = StopRequest()


@contextlib.contextmanager
def stopping_on_signals():
    if threading.current_thread() is not threading.main_thread():      # signal handlers live there only
        yield
        return
    old = {s: signal.signal(s, STOP) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if STOP not in old.values():      # the outermost run: a nested one (--pretrain-encoder's) passes it on
            STOP.signum = None


# ------------------------------------------------------------------------------------------------
# 5. Evaluation: one pass over batches for every mode and dataset (validation and test); decoding text
# from z.

PAD, BOS, EOS = (datalib.SPECIALS.index(t) for t in (datalib.PAD, datalib.BOS, datalib.EOS))


def nonfinite(metrics):
    """'name value' of every NaN or infinite metric."""
    return [f"{k} {v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]


def perplexity(nats, tokens):
    """exp(nats per token); infinite past float range (over ~709 nats per token) rather than an
    OverflowError, so a diverged model is reported, not crashed on."""
    try:
        return math.exp(nats / tokens)
    except OverflowError:
        return math.inf


@in_eval_mode
def decode(model, z, max_len, method="greedy", beam_size=1, temperature=1.0, gen=None):
    """Token ids (N, L <= max_len) generated by the text decoder from z (N, nz), all rows at once, in
    eval mode (no dropout). A row ends at its first </s> (PAD after it) or is cut at max_len.
    greedy: the most likely next token; sample: a draw from the next-token distribution with its
    logits divided by `temperature` (-> 0: greedy); beam: beam search keeping the beam_size prefixes of highest total
    log-probability, finished ones competing unchanged with longer ones (no length normalization),
    and returning the best (beam size 1 is greedy)."""
    k = beam_size if method == "beam" else 1
    n, dev = z.size(0), z.device
    z = z.repeat_interleave(k, 0)
    state = model.decoder.init_state(z)
    tok = torch.full((n * k,), BOS, device=dev)
    score = torch.zeros(n, k, device=dev)
    score[:, 1:] = -math.inf                # the k copies of the start: only one may expand
    done = torch.zeros(n * k, dtype=torch.bool, device=dev)
    seqs = tok.new_empty(n * k, 0)
    for _ in range(max_len):
        logits, state = model.decoder.step(tok, z, state)
        logp = logits.log_softmax(-1)
        logp[:, [PAD, BOS]] = -math.inf      # never a target in training, so never a word to emit
        logp[done] = -math.inf
        logp[done, PAD] = 0.0                # a finished row only pads, at no cost
        if method == "sample":
            tok = torch.multinomial((logp / temperature).softmax(-1), 1, generator=gen)[:, 0]
        else:
            score, idx = (score.view(-1, 1) + logp).view(n, -1).topk(k, -1)
            tok = idx.view(-1) % logp.size(1)
            if k > 1:                        # each new prefix continues the beam it came from
                src = (idx // logp.size(1) + k * torch.arange(n, device=dev)[:, None]).view(-1)
                seqs, done, state = seqs[src], done[src], tuple(s[:, src] for s in state)
        seqs = torch.cat([seqs, tok[:, None]], 1)
        done = done | (tok == EOS)
        if done.all():
            break
    return seqs.view(n, k, -1)[:, 0]


def reconstruction_hits(model, x, mu):
    """Tokens of x (words and </s>) that greedy decoding from z = mu puts at their own position, the
    decoder feeding on its own outputs (no teacher forcing); every position after an early </s> is a
    miss. A collapsed model reproduces only what the language model guesses; one that uses z more."""
    y = decode(model, mu, x.size(1) - 1)
    return int((y == x[:, 1:y.size(1) + 1]).sum())


@in_eval_mode
def evaluate(model, batches, cfg, iw_samples=0, desc="eval", rec_acc=False, mi_samples=1, stoppable=False):
    """Per-example -ELBO (`elbo`), `rec`, analytic `kl`; `mi` as the paper computes it (each
    minibatch is the mixture, weighted average over batches, at most log B); `mi_full` with the whole
    set as the mixture; active units `au`; for text `elbo_ppl` per predicted token and, if asked (it
    decodes token by token, which costs more than the rest of a validation pass), `rec_acc`: the
    fraction of predicted tokens that greedy decoding from the posterior mean reproduces at their
    position (reconstruction_hits), and `rec_acc_other`, the same from another document's mean (the
    set's means rolled by one): a model that ignores z scores the same on both, so their difference
    is the part of the score z is responsible for, whatever the language model's own greedy sentence
    happens to match; with iw_samples > 0 also `iw_nll` and `ppl` from it. Noise comes from a
    generator seeded with cfg.seed, so every call sees the same noise (common random numbers make
    epoch-to-epoch MI comparisons meaningful). One draw per example, as in the official code, is
    noisy on a few hundred documents, enough to move a run across the `escaped` line (RESULTS.md);
    mi_samples > 1 averages over more draws of the same Eq. 5 estimate, taken from a second generator
    so that every other number is the same as with one. Validation keeps one draw: it drives the
    paper's rule. SA-VAE is evaluated on its refined posteriors, and `svi_gap` is how much
    refinement lowers the -ELBO. stoppable: a stop request (SIGTERM, Ctrl-C) ends the pass between
    batches (a run's final test: its training is saved, the test is rerun on --resume)."""
    dev = batches[0].device
    gen = torch.Generator(dev).manual_seed(cfg.seed)
    mi_gen = torch.Generator(dev).manual_seed(cfg.seed + 1)
    sums = dict.fromkeys(("rec", "kl", "mi", "nll", "amortized"), 0.0)      # over the examples, in batch order
    n = tokens = hits = 0
    mus, logvars, zs = [], [], []
    for i, x in evaluation_batches(batches, cfg, desc):
        if stoppable:
            STOP.check(f"the {desc} evaluation, batch {i + 1} of {len(batches)} (training is over)")
        mu0, logvar0 = model.encode(unpadded(model, x))
        mu, logvar = refine(model, x, mu0, logvar0, cfg, gen=gen)
        if cfg.savae:
            sums["amortized"] += float(gaussian_kl(mu0, logvar0).sum()
                                       - model.log_px_given_z(x, sample_z(mu0, logvar0, 1, gen)).sum())
        z = sample_z(mu, logvar, 1, gen)
        sums["rec"] += float(-model.log_px_given_z(x, z).sum())
        sums["kl"] += float(gaussian_kl(mu, logvar).sum())
        z_mi = z if mi_samples == 1 else sample_z(mu, logvar, mi_samples, mi_gen)
        sums["mi"] += float(mutual_info_draws(mu, logvar, z_mi)) * x.size(0)      # the batch's estimate, weighted
        if iw_samples:
            sums["nll"] += float(iw_nll(model, x, iw_samples, cfg.iw_chunk, gen, (mu, logvar)).sum())
        if model.kind == "text" and rec_acc:
            hits += reconstruction_hits(model, x, mu)
        mus.append(mu), logvars.append(logvar), zs.append(z_mi)
        n += x.size(0)
        tokens += model.n_targets(x)
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    out = {"elbo": (sums["rec"] + sums["kl"]) / n, "rec": sums["rec"] / n, "kl": sums["kl"] / n, "mi": sums["mi"] / n,
           "mi_full": float(mutual_info_draws(mu, logvar, torch.cat(zs))), "au": active_units(mu), "n": n}
    if model.kind == "text":
        out.update(elbo_ppl=perplexity(sums["rec"] + sums["kl"], tokens))
        if rec_acc:
            others = mu.roll(1, 0).split([len(x) for x in batches])
            other_hits = sum(reconstruction_hits(model, x, m) for x, m in zip(batches, others))
            out.update(rec_acc=hits / tokens, rec_acc_other=other_hits / tokens)
    if cfg.savae:
        out["svi_gap"] = (sums["amortized"] - sums["rec"] - sums["kl"]) / n
    if iw_samples:
        out.update(iw_nll=sums["nll"] / n, iw_samples=iw_samples,
                   **({"ppl": perplexity(sums["nll"], tokens)} if model.kind == "text" else {}))
    return out


def evaluation_batches(batches, cfg, desc):
    """(i, batch), with progress lines: IW-NLL takes minutes."""
    progress = Progress(cfg, desc, len(batches))
    for i, x in enumerate(batches):
        yield i, x
        progress.step()


# ------------------------------------------------------------------------------------------------
# 6. Training modes. One loop (train) with small pieces: `update` steps the encoder, the decoder or
# both; `aggressive_inner_loop` is Algorithm 1 lines 5-9; the MI rule of Sec. 4.2 ends it.

def make_optimizers(model, cfg, lr):
    """Separate optimizers so that an encoder-only or decoder-only step touches nothing else.
    A decay recreates them, dropping Adam's moments, as the official code does."""
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[cfg.optim]
    return {"encoder": opt(model.encoder.parameters(), lr=lr * cfg.encoder_lr_mult),
            "decoder": opt(model.decoder.parameters(), lr=lr)}


@contextlib.contextmanager
def idle_side_frozen(model, part):
    """Restore the idle side's buffers (batch-norm running statistics) after a one-sided step. Its
    layers still normalize with the current batch's statistics, so the active side trains against
    the same function as in a joint step, but an encoder-only step leaves the decoder exactly as it
    was (and vice versa). The official image code lets inner-loop passes move the decoder's running
    statistics; ours follow the decoder's own updates only."""
    idle = [getattr(model, n) for n in ("encoder", "decoder") if part not in (n, "all")]
    saved = [(b, b.clone()) for m in idle for name, b in m.named_buffers()
             if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def update(model, opts, x, cfg, part="all", kl_weight=1.0):
    """One gradient step on the batch objective for `part` ('encoder', 'decoder' or 'all'); returns
    the detached (batch loss, per-example rec, per-example kl).

    As in the official code, gradients are clipped by the joint norm over encoder and decoder even
    when one side is stepped, so the idle side's gradient scales the active side's step. (Clipping
    the stepped side alone gives inner-loop encoder steps several times larger; on the synthetic
    data that made 3 of 4 seeds fall back into collapse during aggressive training, see RESULTS.md.)
    The idle side's gradients are then discarded and its optimizer is not stepped."""
    with idle_side_frozen(model, part):
        loss, rec, kl = objective(model, x, cfg, kl_weight)
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        for name, opt in opts.items():
            if part in (name, "all"):
                opt.step()
            else:
                opt.zero_grad(set_to_none=True)
    return loss.detach(), rec.detach(), kl.detach()


def aggressive_inner_loop(model, opts, x, random_batch, cfg, kl_weight=1.0, after_step=None):
    """Algorithm 1, lines 5-9: encoder-only updates, the first on the outer minibatch and later ones
    on random minibatches, until the encoder has caught up, or a fixed budget of `inner_steps`
    (Table 4). Caught up means: the mean per-token loss over the latest window of `inner_window`
    steps is not below the window before by more than `inner_z` standard errors of the difference.
    With inner_z 0 this is the paper's test (any rise stops). Because every step sees a new random
    batch, once the encoder has caught up that plain comparison still reads batch noise as progress
    about half of the time; a positive inner_z stops when the fall is within that noise. The loss
    stays on the device and is read once per window. Returns the step count.
    after_step, if given, is called after every encoder update (Figure 3's trajectory)."""
    # Eq. 4: phi* = argmax_phi L(X; theta, phi), approximated by these encoder steps.
    budget = cfg.inner_steps or cfg.max_inner_steps
    prev, prev_se2, win_loss, win_n, per_token, steps = math.inf, 0.0, 0.0, 0, [], 0
    while steps < budget:
        loss = update(model, opts, x, cfg, "encoder", kl_weight)[0]
        win_loss = win_loss + loss * x.size(0)
        win_n += model.n_targets(x)
        if cfg.inner_z:
            per_token.append(loss * (x.size(0) / model.n_targets(x)))
        steps += 1
        if after_step:
            after_step()
        if not cfg.inner_steps and steps % cfg.inner_window == 0:
            cur = float(win_loss) / win_n
            se2 = float(torch.stack(per_token).var()) / cfg.inner_window if cfg.inner_z else 0.0
            if cur > prev - cfg.inner_z * math.sqrt(prev_se2 + se2):
                break
            prev, prev_se2, win_loss, win_n, per_token = cur, se2, 0.0, 0, []
        x = random_batch()
    return steps


class AggressiveSwitch:
    """Sec. 4.2: aggressive updates continue while validation MI keeps climbing.

    The official text code compares the per-minibatch MI estimate with the previous epoch's, starting
    from 0; that estimate is noisy (negative on a collapsed model), so one unlucky epoch ends
    aggressive training for good. We use the whole-validation-set estimator `mi_full` (mixture over
    all encodings, evaluated with the same noise every call) and end aggressive training after
    `patience` checks without a new best, as the official image code does with patience 5. A new
    best must beat the old one by more than `tol` nats, so a slow creep of the MI (which the paper's
    rule rewards with more aggressive epochs) does not keep the inner loop running. Checks within an
    epoch (`final=False`) count against the patience only once the best MI has passed `floor`: on a
    model still at the collapsed floor a flat MI means the encoder has not yet caught up, not that it
    has, and ending there gives up before the escape (RESULTS.md, the first adaptive rule)."""

    def __init__(self, on, patience, tol=0.0, floor=0.0):
        self.on, self.patience, self.tol, self.floor = on, patience, tol, floor
        self.best, self.bad = -math.inf, 0

    def step(self, mi, final=True):
        if not self.on:
            return
        if mi > self.best + self.tol:
            self.best, self.bad = mi, 0
        elif final or self.best >= self.floor:
            self.bad += 1
            self.on = self.bad < self.patience


class Plateau:
    """App. B: the lr decays when validation -ELBO has not improved for `patience` epochs. Unlike the
    official text.py (which also waits until epoch 15 and then resets its reference to the current,
    worse loss) we always compare with the best value so far, as its image code does."""

    def __init__(self, patience):
        self.patience, self.best, self.bad = patience, math.inf, 0

    def step(self, loss):
        """Returns 'best' for a new best, 'decay' when the lr should decay now, else None."""
        if loss < self.best:
            self.best, self.bad = loss, 0
            return "best"
        self.bad += 1
        if self.bad >= self.patience:
            self.bad = 0
            return "decay"
        return None


STEP_KINDS = ("encoder", "decoder", "joint", "svi")     # gradient steps by kind (svi: SA-VAE refinements)


@dataclass
class EpochInProgress:
    """The epoch being trained, as far as it has gone: what a checkpoint within it must carry."""
    aggressive: bool                 # the switch at the epoch's start (its log row says so)
    steps: dict                      # the run's step counts at the epoch's start
    sums: torch.Tensor               # train rec and KL summed over the epoch's examples so far
    batch: int = 0                   # batches done
    seconds: float = 0.0
    mi_checks: list = dataclasses.field(default_factory=list)      # validation MI checked within the epoch
    rng: dict = None                 # the batch order's RNG state at the epoch's start
    kl_weight: float = 1.0           # at the latest batch
    n_train: int = 0                 # training examples of the epoch, once it has run


@dataclass
class TrainState:
    """Everything of the training loop that a checkpoint must carry besides weights, optimizers and
    RNGs. `epoch` is the latest epoch started; it has finished when `current` is None."""
    lr: float
    plateau: Plateau
    switch: AggressiveSwitch
    epoch: int = 0
    it: int = 0                      # training iterations (minibatches) so far
    decays: int = 0
    train_seconds: float = 0.0
    steps: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(STEP_KINDS, 0))
    current: EpochInProgress = None

    @classmethod
    def new(cls, cfg):
        return cls(cfg.lr, Plateau(cfg.decay_patience),
                   AggressiveSwitch(cfg.aggressive, cfg.mi_patience, cfg.mi_tol, cfg.mi_floor))

    def start_epoch(self, device):
        self.epoch += 1
        self.current = EpochInProgress(self.switch.on, dict(self.steps), torch.zeros(2, device=device))

    def state_dict(self):
        """Plain types only (the rules as dicts), so the file loads whichever module wrote it; the epoch
        in progress under "run"."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "current"}
        return {**plain, "plateau": vars(self.plateau), "switch": vars(self.switch),
                "run": vars(self.current) if self.current else None}

    def load_state_dict(self, d):
        for k, v in d.items():
            if k in ("plateau", "switch"):
                vars(getattr(self, k)).update(v)
            elif k == "run":
                self.current = EpochInProgress(**v) if v is not None else None
            else:
                setattr(self, k, v)


DIVERGED = 50     # times the loss of a uniform guess, where every model starts


def divergence(metrics, score, model, batches):
    """Why the validation metrics say training diverged, or None: the loss `score` per example is
    over DIVERGED times that of a uniform guess at every token or pixel (an exploded model whose
    numbers are still finite), or a metric is NaN or infinite (a perplexity past float range too)."""
    uniform = sum(model.uniform_nll(x) for x in batches) / metrics["n"]
    if score > DIVERGED * uniform:
        return f"validation loss {score:.4g} is over {DIVERGED} times that of a uniform guess ({uniform:.4g})"
    broken = nonfinite(metrics)
    return f"validation {', '.join(broken)}" if broken else None


def restored(ck, model, cfg, last):
    """(state, optimizers) of a checked last.pt (load_last), its weights put into model."""
    try:
        model.load_state_dict(ck["model"])
        state = TrainState.new(cfg)
        state.load_state_dict(ck["state"])
        opts = make_optimizers(model, cfg, state.lr)
        for name, opt in opts.items():
            opt.load_state_dict(ck["opts"][name])
    except Exception as e:      # a file from other flags: say which and why
        raise UsageError(f"--resume: cannot continue from {last} ({short_reason(e)})") from None
    return state, opts


def pretrain_encoder(cfg, out, model, device):
    """Li et al. 2019: an autoencoder (KL weight 0) first; its encoder is kept and the decoder stays
    freshly initialized. Returns the autoencoder's result (its seconds and gradient steps count
    towards the run's: they are part of what the method costs)."""
    pre = out / "pretrain"
    ae = {**asdict(cfg), **{f: m.off for f, m in MODES.items() if m.ae_off}, "beta": 0.0, "iw_samples": 0,
          "out": str(pre), "overwrite": False, "resume": cfg.resume and (pre / "last.pt").is_file()}
    result = train(resolve_config(ae))
    enc = load_best(pre / "model.pt", device)["model"]
    model.encoder.load_state_dict({k[len("encoder."):]: v for k, v in enc.items() if k.startswith("encoder.")})
    return result


def train(cfg, generate=True):
    """Train per cfg, writing config.json, log.jsonl, model.pt (best), last.pt (resume) and
    result.json into the run directory. Returns the result dict. generate=False: synthetic data must
    already be under cfg.data_dir (a data root read from a file is not a place to write)."""
    with run_directory(cfg) as out, stopping_on_signals():
        return train_in(cfg, out, generate)


def train_in(cfg, out, generate=True):
    device = use_device(cfg)
    seed_all(cfg.seed)
    corpus = load_data(cfg, generate)
    model = build_model(cfg, corpus).to(device)
    val = [b.to(device) for b in corpus.batches("valid", cfg.batch_size)]
    rng = np.random.default_rng(cfg.seed)
    state = TrainState.new(cfg)
    resuming = cfg.resume and resumable(out)
    more = lambda: state.current is not None or state.epoch < cfg.epochs and state.decays < cfg.max_decay
    if resuming:
        ck = load_last(out, rng, device, corpus)
        state, opts = restored(ck, model, cfg, out / "last.pt")
        keep_rows(out, ck["rows"], out / "last.pt")
        if not more() and (out / "result.json").is_file():
            load_best(out / "model.pt", device)      # the result stands for a model that is there and readable
            if not cfg.quiet:
                print(f"{out}: finished after epoch {state.epoch}, its result.json stands; nothing to resume (a "
                      f"larger --epochs or --max-decay trains it further)", flush=True)
            return json.loads((out / "result.json").read_text())
        if state.current is None:      # a divergence in the next epoch goes back here, as in a run never stopped
            keep_good_epoch(out)
    # The first file of a fresh run, so that no file of it is ever without the settings that made it;
    # on a resume, written once the checks above passed, so that a refused resume changes nothing.
    write_json(out / "config.json", {"config": asdict(cfg), "mode": mode_name(cfg), "device": str(device),
                                     **environment()})
    if not resuming:
        if cfg.pretrain_encoder:
            ae = pretrain_encoder(cfg, out, model, device)
            state.train_seconds, state.steps = ae["train_seconds"], {k: ae[f"steps_{k}"] for k in STEP_KINDS}
            STOP.check("the end of the encoder's pretraining (pretrain/last.pt)")
        opts = make_optimizers(model, cfg, cfg.lr)
        write_atomic(out / "log.jsonl", b"")
        (out / "model.pt").unlink(missing_ok=True)     # never reload a best model of an earlier run
    hooks = Hooks(cfg, corpus, model, out, state, device, fresh=not resuming)
    if not cfg.quiet:
        print("\n".join(banner(cfg, out, device, corpus, model, state if resuming else None,
                               ck["threads"] if resuming else None)), flush=True)

    if more():       # a finished run trained further is unfinished until its new result is written
        (out / "result.json").unlink(missing_ok=True)
    save = lambda: save_last(out / "last.pt", model, opts, state, rng, device, data_identity(corpus))
    while more():
        train_epoch(model, opts, corpus, val, cfg, state, rng, hooks, save)
        opts = end_epoch(model, opts, corpus, val, cfg, state, out, device)
        save()
        keep_good_epoch(out)
        if more():
            STOP.check(f"the end of epoch {state.epoch}")

    best = load_best(out / "model.pt", device)
    if not cfg.quiet:
        why = (f"{cfg.max_decay} lr decays (--max-decay)" if state.decays >= cfg.max_decay else
               f"the budget of {cfg.epochs} epochs (--epochs)")
        print(f"training ended after {why}; testing the best model, of epoch {best['epoch']}", flush=True)
    model.load_state_dict(best["model"])
    hooks.finished()
    test = [b.to(device) for b in corpus.batches("test", cfg.batch_size, limit=cfg.max_test)]
    result = {"data": cfg.data, "mode": mode_name(cfg), "preset": cfg.preset, "seed": cfg.seed,
              "epochs": state.epoch, "decays": state.decays, "train_seconds": state.train_seconds,
              **{f"steps_{k}": v for k, v in state.steps.items()}, "steps": sum(state.steps.values()),
              **evaluate(model, test, cfg, iw_samples=cfg.iw_samples, desc="test", rec_acc=True,
                          mi_samples=cfg.mi_samples, stoppable=True)}
    broken = nonfinite(result)
    if broken:
        raise UsageError(f"{out}: the test evaluation of the best model gave {', '.join(broken)}; no result.json "
                         f"written")
    write_json(out / "result.json", result)
    if not cfg.quiet:
        print("test | " + " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in result.items()))
    return result


class Hooks:
    """What the batch loop does besides training: posterior-mean snapshots (Figure 2) after chosen
    generator updates, and one example's trajectory (Figure 3) after every update. Both draw no
    random numbers, so a run with them trains exactly as one without."""

    def __init__(self, cfg, corpus, model, out, state, device, fresh):
        self.cfg, self.model, self.out, self.state = cfg, model, out, state
        self.snap_iters = {int(i) for i in cfg.snapshot_iters.split(",") if i}
        self.snap_points = ([b.to(device) for b in corpus.batches("valid", 50, limit=500)]
                            if self.snap_iters else [])
        self.track_point = ([b.to(device) for b in corpus.batches("valid", 1, limit=1)]
                            if cfg.trajectory_iters else [])
        if self.snap_iters and fresh:
            write_atomic(out / "snapshots.jsonl", b"")
            if 0 in self.snap_iters:
                self.snapshot()
        if self.track_point and fresh:
            write_atomic(out / "trajectory.jsonl", b"")
            self.track("init")

    def snapshot(self):
        record_snapshot(self.model, self.snap_points, self.state.it, self.cfg, self.out / "snapshots.jsonl")

    def track(self, step):
        if self.track_point and self.state.it <= self.cfg.trajectory_iters:
            record_snapshot(self.model, self.track_point, self.state.it, self.cfg,
                            self.out / "trajectory.jsonl", step)

    def encoder_step(self):
        return (lambda: self.track("encoder")) if self.track_point else None

    def after_batch(self, step):
        self.track(step)
        if self.state.it in self.snap_iters:
            self.snapshot()

    def finished(self):
        if self.snap_iters:
            self.snapshot()                           # "convergence": the best model


@in_eval_mode
def record_snapshot(model, batches, it, cfg, path, step=None):
    """Append the true posterior means (grid) and inference means mu(x) of the snapshot points after
    `it` generator updates to snapshots.jsonl (or, with `step`, to the trajectory file). Deterministic
    and draws no random numbers, so a run with snapshots trains exactly as one without."""
    true = torch.cat([posterior_mean_grid(model, x, stride=cfg.grid_stride) for x in batches])
    mu = torch.cat([model.encode(x)[0][:, 0] for x in batches])
    append_row(path, {"iter": it, **({"step": step} if step else {}), "model_mean": true.tolist(),
                      "inference_mean": mu.tolist()})


def epoch_batches(corpus, cfg, rng, ep, device):
    """This epoch's training batches in order. They are drawn from the run's RNG at the epoch start,
    whose state is kept in `ep`, so a run resumed mid-epoch rebuilds exactly the same batches."""
    if ep.batch == 0:
        ep.rng = rng.bit_generator.state
        order = rng
    else:
        order = np.random.default_rng()
        order.bit_generator.state = ep.rng
    return [b.to(device) for b in corpus.batches("train", cfg.batch_size, order)]


def mi_check_points(cfg, n_batches):
    """Batch counts after which validation MI is checked while aggressive; the last is the epoch end."""
    return {round(k * n_batches / cfg.mi_checks) for k in range(1, cfg.mi_checks)}


def train_epoch(model, opts, corpus, val, cfg, state, rng, hooks, save):
    """One epoch of Algorithm 1 (or of plain joint updates once the switch is off). A checkpoint is
    written every `checkpoint_minutes`, so a killed run loses at most that much of an epoch."""
    device = val[0].device
    if state.current is None:
        state.start_epoch(device)
    ep, switch, steps = state.current, state.switch, state.steps
    batches = epoch_batches(corpus, cfg, rng, ep, device)
    random_batch = lambda: corpus.prepare(batches[rng.integers(len(batches))])
    checks = mi_check_points(cfg, len(batches))
    # No bound on the run's time left while aggressive: those epochs cost several times a plain one, so
    # it would be hours off (446 min said for a 30-minute main job).
    progress = Progress(cfg, f"epoch {state.epoch:3d}", len(batches), ep.batch,
                        None if ep.aggressive else max(0, cfg.epochs - state.epoch))
    t0 = last_save = time.time()
    model.train()
    while ep.batch < len(batches):
        x = corpus.prepare(batches[ep.batch])
        state.it += 1
        ep.kl_weight = kl_weight = kl_weight_at(cfg, state.it, len(batches))
        if switch.on:                                 # Algorithm 1, lines 4-12
            steps["encoder"] += aggressive_inner_loop(model, opts, x, random_batch, cfg, kl_weight,
                                                      hooks.encoder_step())
            _, rec, kl = update(model, opts, x, cfg, "decoder", kl_weight)
            steps["decoder"] += 1
            hooks.after_batch("decoder")
        else:
            _, rec, kl = update(model, opts, x, cfg, "all", kl_weight)
            steps["joint"] += 1
            steps["svi"] += cfg.svi_steps if cfg.savae else 0
            hooks.after_batch("joint")
        ep.sums += torch.stack([rec.sum(), kl.sum()])
        ep.batch += 1
        progress.step(lambda: f"inner steps {steps['encoder'] - ep.steps['encoder']} | train -elbo "
                              f"{float(ep.sums.sum()) / sum(len(b) for b in batches[:ep.batch]):.3f} | ")
        if switch.on and ep.batch in checks:      # Sec. 4.2, checked within the epoch
            ep.mi_checks.append(evaluate(model, val, cfg, desc="valid")["mi_full"])
            switch.step(ep.mi_checks[-1], final=False)
            if not cfg.quiet:
                print(f"epoch {state.epoch:3d} | batch {ep.batch}/{len(batches)} | val mi_full "
                      f"{ep.mi_checks[-1]:.3f} | aggressive {int(switch.on)}", flush=True)
        if STOP.signum is not None or cfg.checkpoint_minutes and time.time() - last_save > 60 * cfg.checkpoint_minutes:
            ep.seconds += time.time() - t0
            t0 = last_save = time.time()
            save()
            STOP.check(f"epoch {state.epoch} batch {ep.batch}")
    ep.seconds += time.time() - t0
    ep.n_train = sum(len(b) for b in batches)


def end_epoch(model, opts, corpus, val, cfg, state, out, device):
    """Validation, the aggressive switch (Sec. 4.2), the epoch's log row, model selection on
    validation -ELBO and the lr decay (App. B). Returns the optimizers (new ones after a decay)."""
    ep, t0 = state.current, time.time()
    train_rec, train_kl = (ep.sums / ep.n_train).tolist()
    metrics = evaluate(model, val, cfg, desc="valid")
    state.switch.step(metrics["mi_full"])
    ep.seconds += time.time() - t0
    state.train_seconds += ep.seconds
    epoch_steps = {k: state.steps[k] - ep.steps[k] for k in STEP_KINDS}
    row = {"epoch": state.epoch, "train_elbo": train_rec + train_kl, "train_rec": train_rec,
           "train_kl": train_kl, **{f"val_{k}": v for k, v in metrics.items()},
           "lr": state.lr, "kl_weight": ep.kl_weight, "aggressive": ep.aggressive,
           "inner_steps": epoch_steps["encoder"] / epoch_steps["decoder"] if epoch_steps["decoder"] else 0.0,
           **{f"steps_{k}": v for k, v in epoch_steps.items()}, "mi_checks": ep.mi_checks,
           "seconds": ep.seconds}
    # Model selection on validation -ELBO (weight 1), except for the autoencoder of
    # --pretrain-encoder (KL weight 0), whose KL is free to grow: it is selected on reconstruction.
    score = metrics["rec"] if cfg.beta == 0 else metrics["elbo"]
    why = divergence(metrics, score, model, val)
    # The row of a diverged epoch says so (last.pt does not count it), so a table calls the run
    # diverged, not unfinished.
    append_row(out / "log.jsonl", {**row, **({"diverged": why} if why else {})})
    state.current = None
    if not cfg.quiet:
        print(f"epoch {row['epoch']:3d} | val -elbo {metrics['elbo']:.3f} rec {metrics['rec']:.3f} "
              f"kl {metrics['kl']:.3f} mi {metrics['mi']:.3f} mi_full {metrics['mi_full']:.3f} "
              f"au {metrics['au']} | lr {state.lr:g} kl_weight {row['kl_weight']:.3f} | "
              f"aggressive {int(row['aggressive'])} inner {row['inner_steps']:.1f} | {row['seconds']:.1f}s", flush=True)

    if why:
        if (out / "epoch.pt").is_file():
            os.replace(out / "epoch.pt", out / "last.pt")
            kept = f"last.pt holds the end of epoch {state.epoch - 1}"
        else:
            (out / "last.pt").unlink(missing_ok=True)
            kept = "no epoch had finished, --resume starts afresh"
        raise UsageError(f"{out}: epoch {state.epoch}: {why}; training diverged ({kept}; try a smaller --lr "
                         f"or --clip-grad)")
    verdict = state.plateau.step(score)
    decay = state.epoch in decay_epochs(cfg.decay_at) if cfg.decay_at else verdict == "decay"
    if verdict == "best":
        save_model(out / "model.pt", cfg, model, state.epoch, data_identity(corpus))
    if decay:                                     # halve the lr and restart from the best model
        state.lr *= cfg.lr_decay
        state.decays += 1
        model.load_state_dict(load_best(out / "model.pt", device)["model"])
        opts = make_optimizers(model, cfg, state.lr)
    return opts


# ------------------------------------------------------------------------------------------------
# 7. Saved models: load a model.pt and evaluate it, its samples and latents; the Python API.


def given(**flags):
    """The flags a command was given (None: not given, so the run's own value stands)."""
    return {k: v for k, v in flags.items() if v is not None}


def load_checkpoint(ckpt, data_dir=None, device="auto", need_data=True, test=None, **overrides):
    """(model, cfg, corpus) rebuilt from a model.pt and its dataset; refused when the file lacks a
    field, its config is invalid, its weights are not finite or do not fit its config. need_data=False:
    a text model's own vocabulary suffices (the corpus then has no splits) and no data file is read.
    test: a text file read with the model's own vocabulary as the corpus's only split, the test split
    (no other data file is read)."""
    bad = lambda why: UsageError(f"--ckpt {ckpt}: {why}")
    if not Path(ckpt).is_file():
        raise bad("no such file" if not Path(ckpt).exists() else "not a file (a run directory? its model.pt)")
    not_model = lambda why: bad(f"not a lagvae model checkpoint ({why})")
    ck = checked(load_pt(ckpt, "cpu", not_model), MODEL_FIELDS, not_model, "evaluate it with the lagvae that "
                 "wrote it (its run's config.json names the git commit)")
    saved, weights = ck["config"], ck["model"]
    if not isinstance(saved, dict):
        raise bad(f"its config is a {type(saved).__name__}, expected a dict of fields")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise bad("its weights are not a state dict of named tensors")
    broken = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise bad(f"weights hold NaN or infinite values ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})"
                  f": the run diverged")
    try:
        resolve_config({**saved, "device": "cpu"})      # faults of the saved config are the checkpoint's
    except UsageError as e:
        raise bad(f"its saved config is invalid ({e})") from None
    cfg = resolve_config({**saved, "device": device, **({"data_dir": data_dir} if data_dir else {}), **overrides})
    if test and datalib.kind(cfg.data) != "text":
        raise UsageError(f"--test {test}: a file of sentences for a text model; {ckpt} is an image model")
    if test:
        labelled = datalib.text_spec(cfg.data, ".")[1].get("labelled", False)
        corpus = datalib.test_corpus(cfg.data, test, ck["vocab"], cfg.subset, cfg.max_len, labelled)
    elif need_data:
        corpus = load_data(cfg, generate=False)
    elif datalib.kind(cfg.data) == "text":
        corpus = datalib.TextCorpus(cfg.data, ck["vocab"], {})
    else:       # the model needs no image to be built
        corpus = datalib.ImageData(cfg.data, {}, "none")
    if getattr(corpus, "vocab_size", None) != ck["vocab_size"]:
        raise bad(f"trained with vocabulary {ck['vocab_size']}, "
                  f"but {cfg.data} now has {getattr(corpus, 'vocab_size', None)}")
    if corpus.splits and ck["vocab"] is not None and ck["vocab"] != corpus.vocab:
        first = next(i for i, (a, b) in enumerate(zip(ck["vocab"], corpus.vocab)) if a != b)
        raise bad(f"its vocabulary is not the one {cfg.data} gives now (id {first}: {ck['vocab'][first]!r} when "
                  f"trained, {corpus.vocab[first]!r} now): its numbers on this data would be wrong")
    model = build_model(cfg, corpus).to(use_device(cfg))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:       # missing, unexpected or differently shaped tensors
        raise bad(f"its weights do not fit its config ({e})") from None
    model.identity, model.epoch = {k: ck[k] for k in ("vocab", "specials", "fingerprints")}, ck["epoch"]
    return model, cfg, corpus


def evaluate_checkpoint(ckpt, iw_samples=None, mi_samples=None, data_dir=None, device="auto", quiet=False,
                        update=False, eval_seeds=None, bound=None, max_test=None, threads=None, test=None):
    """Rebuild the model saved at `ckpt` and evaluate it on its dataset's test split; a NaN or
    infinite result is an error, never a number in the report. update: write the evaluation into the
    run's result.json (e.g. MI with more draws for runs that finished with one), keeping its training
    fields, and report each number that changed (refused while the run trains). eval_seeds N: the evaluation's own uncertainty (App. D,
    Tables 7 and 8): the same model evaluated with the noise of seeds 0..N-1, mean and variance."""
    if (eval_seeds or bound) and update:
        raise UsageError(f"{'--bound' if bound else '--eval-seeds'}: reports a spread of evaluations; it does not "
                         f"--update result.json")
    for flag, value in (("--max-test", max_test), ("--test", test)):
        if value is not None and update:
            raise UsageError(f"{flag}: another test set than the run's; it does not --update result.json")
    # --update takes the run's lock before reading model.pt: while the run trains, its model.pt is not
    # yet the one its result.json will stand for.
    with run_lock(Path(ckpt).parent, "--update") if update else contextlib.nullcontext():
        model, cfg, corpus = load_checkpoint(ckpt, data_dir, device, test=test, quiet=quiet, **given(
            iw_samples=iw_samples, mi_samples=mi_samples, max_test=max_test, threads=threads))
        device = next(model.parameters()).device
        seed_all(cfg.seed)
        test = [b.to(device) for b in corpus.batches("test", cfg.batch_size, limit=cfg.max_test)]
        if bound:
            result = bound_spread(model, cfg, test, bound, eval_seeds or 1)
            if not all(math.isfinite(b["mean"]) for b in result["bound"].values()):
                raise UsageError(f"--ckpt {ckpt}: a bound is not finite; the model is numerically broken")
            return result
        if eval_seeds:
            return evaluation_spread(ckpt, model, cfg, test, eval_seeds)
        result = evaluate(model, test, cfg, iw_samples=cfg.iw_samples, desc="test", rec_acc=True,
                          mi_samples=cfg.mi_samples)
        broken = nonfinite(result)
        if broken:
            raise UsageError(f"--ckpt {ckpt}: evaluation gave {', '.join(broken)}; the model is numerically broken")
        result = {"data": cfg.data, "mode": mode_name(cfg), "seed": cfg.seed, **result,
                  **test_set_note(model.identity["fingerprints"], corpus, ckpt)}
        return update_result(Path(ckpt).parent / "result.json", {**result, "mi_samples": cfg.mi_samples}) if update else result


SPREAD_METRICS = ("iw_nll", "elbo", "kl", "mi", "au")      # the columns of the paper's Tables 7 and 8


def evaluation_spread(ckpt, model, cfg, test, n):
    """The same model on the same test batches, with the noise of seeds 0..n-1."""
    runs = []
    for seed in range(n):
        r = evaluate(model, test, dataclasses.replace(cfg, seed=seed), iw_samples=cfg.iw_samples, desc=f"seed {seed}",
                     mi_samples=cfg.mi_samples)
        if nonfinite(r):
            raise UsageError(f"--ckpt {ckpt}: evaluation seed {seed} gave {', '.join(nonfinite(r))}")
        runs.append({k: r[k] for k in SPREAD_METRICS if k in r})
    keys = [k for k in SPREAD_METRICS if k in runs[0]]
    values = {k: np.array([r[k] for r in runs], dtype=float) for k in keys}
    return {"data": cfg.data, "mode": mode_name(cfg), "seed": cfg.seed, "eval_seeds": n,
            "iw_samples": cfg.iw_samples, "mean": {k: float(v.mean()) for k, v in values.items()},
            "var": {k: float(v.var(ddof=1)) if n > 1 else 0.0 for k, v in values.items()}, "per_seed": runs}


@in_eval_mode
def bound_spread(model, cfg, test, ks, n):
    """How loose the importance-weighted bound is: -log p(x) bounded with K samples for each K of ks,
    on the same test documents and from the same draws. Each of n evaluation seeds draws max(ks)
    samples per document; the bound at K is the mean over documents of each of the max(ks) / K disjoint
    groups of K, so the groups give its sampling spread (sd) too. K = 1 is the ELBO's Monte Carlo
    estimate. A model without a latent (--lm) has its exact NLL at every K, computed once."""
    ks = [1] if cfg.lm else sorted(ks)
    groups = {k: [] for k in ks}
    for seed in range(n):
        gen = torch.Generator(test[0].device).manual_seed(seed)
        sums, docs = {k: 0.0 for k in ks}, 0
        for _, x in evaluation_batches(test, cfg, f"bound, seed {seed}"):
            mu, logvar = refine(model, x, *model.encode(x), cfg, gen=gen)
            log_w = iw_log_weights(model, x, max(ks), cfg.iw_chunk, gen, (mu, logvar))
            for k in ks:
                sums[k] = sums[k] + iw_nll_groups(log_w, k).sum(0)
            docs += x.size(0)
        for k in ks:
            groups[k] += (sums[k] / docs).tolist()
    return {"data": cfg.data, "mode": mode_name(cfg), "seed": cfg.seed, "n": docs, "eval_seeds": n,
            "exact": cfg.lm, "bound": {str(k): {"mean": float(np.mean(g)), "sd": float(np.std(g, ddof=1)) if len(g) > 1
                                                else 0.0, "groups": len(g)} for k, g in groups.items()}}


def test_set_note(fingerprints, corpus, ckpt):
    """{"test_data": "as trained" | "other than at training"}, and a line on stderr when it is other:
    the same model on another test set is a fair evaluation, but not the run's own number."""
    if fingerprints["test"] == fingerprint(corpus.splits["test"]):
        return {"test_data": "as trained"}
    print(f"lagvae: note: the test set is not the one {ckpt} was tested on at the end of training", file=sys.stderr)
    return {"test_data": "other than at training"}


def update_result(path, new):
    """Merge a re-evaluation into a finished run's result.json; the changes are printed, never silent."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--update: {path}: no readable result.json of a finished run ({e})") from None
    merged = {**old, **new}
    for k, v in merged.items():
        if old.get(k) != v:
            print(f"{path}: {k} {old.get(k)} -> {v}", file=sys.stderr)
    write_json(path, merged)
    return merged


@in_eval_mode
def encode_examples(model, examples, batch_size, prepare=lambda x: x):
    """The encoder's (mu, logvar) for every example, in their order, in eval mode. Batches are length
    buckets, since the text encoder reads no padding (every image has one "length": its channel)."""
    dev = next(model.parameters()).device
    order, mus, logvars = [], [], []
    for idx in datalib.length_buckets(examples, batch_size):
        mu, logvar = model.encode(prepare(torch.stack([examples[i] for i in idx]).to(dev)))
        order += idx
        mus.append(mu), logvars.append(logvar)
    inverse = torch.tensor(order, device=dev).argsort()
    return torch.cat(mus)[inverse], torch.cat(logvars)[inverse]


def counted(n, noun):
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def read_new_text(source, vocab, cfg, flag):
    """Sentences from a file or `-` (stdin), tokenized as the training data was; says on stderr how many
    tokens were outside the vocabulary."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        text = raw.decode("utf-8")
    except OSError as e:
        raise UsageError(f"{flag} {source}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag} {source}: not UTF-8 text (byte {e.start})") from None
    examples, tokens, unknown = datalib.encode_new_text(text, vocab, cfg.max_len)
    if not examples:
        raise UsageError(f"{flag} {source}: no sentences (expected one a line)")
    print(f"lagvae: {flag} {source}: {counted(len(examples), 'sentence')}, {counted(tokens, 'token')}, {unknown} "
          f"outside the vocabulary (read as <unk>)", file=sys.stderr)
    return examples


def export_latents(ckpt, split="test", out=None, data_dir=None, device="auto", input=None, threads=None):
    """An .npz of q(z|x) for every example of `split` as the run loaded it (--subset applies), in
    file order, or of every line of `input` (a file or - for stdin, raw sentences; no data files
    needed): `mu` and `logvar` (N, nz) from the encoder (SA-VAE's refinement depends on the batch,
    so it is left out), `labels` (N,) for a labelled corpus (Yelp), and for a split of text `line` (N,):
    each example's line number in its file (blank lines are no examples). Returns the path."""
    name = "input" if input else split
    path = output_file(out, None) if out else Path(ckpt).with_name(f"latents.{name}.npz")
    model, cfg, corpus = load_checkpoint(ckpt, data_dir, device, need_data=not input, **given(threads=threads))
    if input and corpus.kind != "text":
        raise UsageError(f"--input: sentences go to a text model; {ckpt} is an image model")
    seed_all(cfg.seed)                       # grey training images are binarized afresh: repeatably
    examples = read_new_text(input, corpus.vocab, cfg, "--input") if input else corpus.splits[split]
    mu, logvar = encode_examples(model, examples, cfg.batch_size, corpus.prepare)
    labels = None if input else getattr(corpus, "labels", {}).get(split)
    # Rows keyed to the source file: blank lines are no documents, so row i is not line i + 1.
    lines = None if input else getattr(corpus, "lines", {}).get(split)
    extra = {**({"labels": np.array(labels)} if labels else {}), **({"line": np.array(lines)} if lines else {})}
    # A file object: np.savez would append .npz to a name.
    atomic_save({"mu": mu.cpu().numpy(), "logvar": logvar.cpu().numpy(), **extra},
                path, lambda arrays, f: np.savez(f, **arrays))
    return path


@in_eval_mode
def sample_pixels(model, z):
    """Draw images from p(x|z) pixel by pixel (the PixelCNN is autoregressive in raster order)."""
    x = torch.zeros(z.size(0), 1, 28, 28, device=z.device)
    for r in range(28):
        for c in range(28):
            p = torch.sigmoid(model.decoder.logits(x, z)[:, :, r, c])
            x[:, :, r, c] = torch.bernoulli(p)
    return x


def output_file(path, formats):
    """An --out path checked before any work is done: a file name (not a folder) in an existing
    folder, with a suffix among `formats` (any when None)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--out {path}: is a folder; expected a file name")
    if not p.parent.is_dir():
        raise UsageError(f"--out {path}: there is no folder {p.parent}")
    if formats is not None and p.suffix.lower().lstrip(".") not in formats:
        raise UsageError(f"--out {path}: expected a file name ending in "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return p


# The logits divided by it stay finite in float32 (no NaN from inf / inf or 0 / 0): sampling at 1e-6 is
# greedy in effect, at 1e6 uniform over the vocabulary.
TEMPERATURE = within(1e-6, 1e6)
MAX_SAMPLES = 1024       # a grid of 3 x 1,024 images, drawn pixel by pixel: more is no longer a figure


def write_samples(ckpt, out=None, n=None, data_dir=None, device="auto", method=None, beam_size=None,
                  temperature=None, max_len=None, interpolate=None, reconstruct=None, threads=None):
    """Prior samples and test reconstructions of a saved model: for an image model a PNG grid, for a
    text model a text file, also printed (write_text_samples). reconstruct: a file of sentences (or -
    for stdin) to reconstruct instead of the test documents; then no data file is read. Returns the path."""
    path = output_file(out, {"png", "txt"}) if out else None      # checked before any work
    if n is not None and n > MAX_SAMPLES:
        raise UsageError(f"--n: expected at most {MAX_SAMPLES}, got {n}")
    if temperature is not None:
        check_flag("temperature", temperature, TEMPERATURE)
    try:
        model, cfg, corpus = load_checkpoint(ckpt, data_dir, device, need_data=not reconstruct, **given(threads=threads))
    except DataMissing as e:        # prior samples need only the model
        model, cfg, corpus = load_checkpoint(ckpt, data_dir, device, need_data=False, **given(threads=threads))
        print(f"lagvae: note: {e}; writing prior samples only", file=sys.stderr)
    if reconstruct and corpus.kind != "text":
        raise UsageError(f"--reconstruct: sentences go to a text model; {ckpt} is an image model")
    seed_all(cfg.seed)
    suffix = {"text": ".txt", "image": ".png"}[corpus.kind]
    if path and path.suffix.lower() != suffix:
        raise UsageError(f"--out {out}: the samples of a {corpus.kind} model go to a {suffix} file")
    path = path or Path(ckpt).with_name("samples" + suffix)
    if corpus.kind == "text":
        docs = read_new_text(reconstruct, corpus.vocab, cfg, "--reconstruct") if reconstruct else corpus.splits.get("test", [])
        return write_text_samples(model, cfg, corpus.vocab, docs, path, 10 if n is None else n, method or "greedy",
                                  beam_size or 5, 1.0 if temperature is None else temperature, max_len, interpolate,
                                  "your sentences" if reconstruct else "test documents")
    text_only = [flag for flag, v in (("--decode", method), ("--beam-size", beam_size), ("--max-len", max_len),
                                      ("--temperature", temperature), ("--interpolate", interpolate)) if v is not None]
    if text_only:
        raise UsageError(f"{text_only[0]}: a decoding option of text models; {ckpt} is an image model")
    return write_image_samples(model, cfg, corpus, path, 32 if n is None else n)


@in_eval_mode
def write_image_samples(model, cfg, corpus, path, n):
    """A PNG grid: prior samples on top; below, test images and their reconstructions from z = mu,
    alternating rows."""
    from torchvision.utils import save_image
    if n < 8 or n % 8:
        raise UsageError(f"--n: expected a multiple of 8 (grid rows of 8) from 8 to {MAX_SAMPLES}, got {n}")
    dev = next(model.parameters()).device
    rows = [sample_pixels(model, torch.randn(n, cfg.nz, device=dev))]
    if "test" in corpus.splits:     # without the data: prior samples only
        test = corpus.splits["test"][:n].to(dev)
        recon = sample_pixels(model, model.encode(test)[0])
        rows += [t for i in range(0, n, 8) for t in (test[i:i + 8], recon[i:i + 8])]
    save_image(torch.cat(rows), path, nrow=8, padding=2, pad_value=0.5)
    return path


def sentence(vocab, ids):
    """The words of token ids; a decoding ends at </s> or is cut at max_len ("...")."""
    text = " ".join(vocab[i] for i in ids if i not in (PAD, BOS, EOS)) or "(empty)"
    return text if EOS in ids else text + " ..."


def write_text_samples(model, cfg, vocab, test, path, n, method, beam_size, temperature, max_len, interpolate,
                       what="test documents"):
    """n sentences decoded from the prior; the first n documents of `test` (the test split, or the
    user's sentences), each followed by its decoding from the posterior mean and from a posterior
    sample; with interpolate = [I, J], 7 evenly spaced points on the line between the posterior means
    of documents I and J, ends included (Bowman et al. 2016's homotopy). max_len defaults to the
    longest document."""
    if interpolate and not all(0 <= i < len(test) for i in interpolate):
        raise UsageError(f"--interpolate: expected two indices of {what} below {len(test)}, got {interpolate}")
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(cfg.seed)
    # its words and </s>; without documents (prior samples only) the run's cut, else 50
    max_len = max_len or (max(len(d) for d in test) - 1 if test else cfg.max_len or 50)

    words = functools.partial(sentence, vocab)
    generate = lambda z: list(map(words, decode(model, z, max_len, method, beam_size, temperature, gen).tolist()))
    how = method + (f" (beam size {beam_size})" if method == "beam" else
                    f" (temperature {temperature:g})" if method == "sample" else "")
    lines = [f"# {cfg.data}, {mode_name(cfg)}: {how} decoding, at most {max_len} tokens", "",
             "## from the prior, z ~ N(0, I)", *generate(torch.randn(n, cfg.nz, device=dev, generator=gen))]
    docs = test[:n]
    if docs:
        mu, logvar = encode_examples(model, docs, cfg.batch_size)
        lines += ["", f"## {what}: the original, then decoded from the posterior mean and from a posterior sample"]
        for d, m, s in zip(docs, generate(mu), generate(sample_z(mu, logvar, 1, gen)[:, 0])):
            lines += ["", f"original  {words(d.tolist())}", f"mean      {m}", f"sample    {s}"]
    if interpolate:
        ends = encode_examples(model, [test[i] for i in interpolate], cfg.batch_size)[0]
        t = torch.linspace(0, 1, 7, device=dev)[:, None]
        lines += ["", f"## between the posterior means of {what} {interpolate[0]} and {interpolate[1]}"]
        lines += [f"{float(a):.2f}  {s}" for a, s in zip(t, generate((1 - t) * ends[0] + t * ends[1]))]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_atomic(path, text.encode())
    return path


# The Python API: a saved model and sentences in, numbers and sentences out. Each function batches by
# length on the model's device, so no batch is padded and no tensor is on the wrong device.

def load(path, device="auto", threads=None):
    """A saved model from a run directory or its model.pt, in eval mode on `device`, with its config
    (model.cfg) and, for text, its vocabulary (model.vocab); no data file is read."""
    ckpt = Path(path) / "model.pt" if Path(path).is_dir() else Path(path)
    model, cfg, corpus = load_checkpoint(ckpt, device=device, need_data=False, **given(threads=threads))
    model.cfg, model.vocab = cfg, getattr(corpus, "vocab", None)
    return model.eval()


def save(model, path):
    """A model from load() (trained further or not) as a model.pt that load() and every command read."""
    save_model(Path(path), model.cfg, model, model.epoch, model.identity)
    return Path(path)


def examples_of(model, sentences):
    """Sentences (strings) as the model's token ids, tokenized as its training data was."""
    if model.kind != "text" or isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise UsageError("expected a list of sentences (strings) and a text model from lagvae.load")
    return datalib.encode([datalib.new_tokens(s, model.cfg.max_len) for s in sentences], model.vocab)


def encode(model, sentences):
    """(mu, logvar) of q(z|x), (N, nz) each, for each sentence, in their order."""
    return encode_examples(model, examples_of(model, sentences), model.cfg.batch_size)


@in_eval_mode
def nll(model, sentences, k=500, seed=0):
    """The importance-weighted -log p(x) of each sentence (N,) with k samples, on q(z|x) as evaluation
    uses it (SA-VAE: refined), in their order."""
    examples, dev = examples_of(model, sentences), next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(seed)
    out = torch.empty(len(examples))
    for idx in datalib.length_buckets(examples, model.cfg.batch_size):
        x = torch.stack([examples[i] for i in idx]).to(dev)
        out[idx] = iw_nll(model, x, k, model.cfg.iw_chunk, gen, refine(model, x, *model.encode(x), model.cfg, gen=gen)).cpu()
    return out


def reconstruct(model, sentences, method="greedy", beam_size=5, max_len=50):
    """Each sentence decoded from its posterior mean."""
    mu = encode(model, sentences)[0]
    return [sentence(model.vocab, ids) for ids in decode(model, mu, max_len, method, beam_size).tolist()]


def sample(model, n, method="greedy", beam_size=5, temperature=1.0, max_len=50, seed=0):
    """n sentences decoded from z ~ N(0, I)."""
    if model.kind != "text":
        raise UsageError("sample: sentences come from a text model (an image model's: the samples command)")
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(seed)
    z = torch.randn(n, model.cfg.nz, device=dev, generator=gen)
    return [sentence(model.vocab, ids) for ids in decode(model, z, max_len, method, beam_size, temperature, gen).tolist()]


# ------------------------------------------------------------------------------------------------
# 8. Analysis: tables, figures and the verdicts on the paper's claims, from the runs' records.

TABLE_COLUMNS = ["iw_nll", "elbo", "kl", "mi", "mi_full", "au", "rec_acc", "rec_acc_other", "train_seconds",
                 "steps", "epochs", "agg_epochs", "agg_epoch_s", "epoch_s"]
PAPER_COLUMNS = ["nll", "kl", "mi", "au", "time_ratio", "hours"]
PAPER_CSV = Path(__file__).with_name("paper_results.csv")
PAPER_DATA = {"yahoo-small": "yahoo"}      # our stand-in -> the paper's dataset it is compared with


def paper_rows(path=PAPER_CSV):
    """Every row typed in from the paper's tables, in the file's order."""
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def paper_results(path=PAPER_CSV, table=None):
    """(dataset, mode) -> the paper's row. A mode can have a row in several tables (Ours: Table 1,
    Table 4's convergence row, Table 9's reference row): `table` picks that table's row, else the
    first row of the key wins (Tables 1-3)."""
    rows = {}
    for r in paper_rows(path):
        if table is None or table in r["table"].split("+"):
            rows.setdefault((r["dataset"], r["mode"]), r)
    return rows


def collapse_state(result):
    """'collapsed' (AU 0 and MI < 0.1), 'escaped' (AU >= 1 and MI > 0.5) or 'between'. MI is capped
    by the KL (Eq. 5: MI = KL - KL(q(z)||p(z)) <= KL): the mixture estimate of MI is biased upward
    on a few hundred examples (ptb's collapsed VAE: MI 0.13 from 500 documents at KL 0.04)."""
    mi = min(result["mi"], result.get("kl", math.inf))
    if result["au"] == 0 and mi < 0.1:
        return "collapsed"
    return "escaped" if result["au"] >= 1 and mi > 0.5 else "between"


def epoch_stats(log):
    """From log.jsonl rows: how many epochs ran aggressive, and the mean seconds of an aggressive
    and of a plain epoch, so the cost of the inner loop is measured within one run (same load)."""
    agg = [number(e, "seconds") for e in log if e.get("aggressive")]
    plain = [number(e, "seconds") for e in log if not e.get("aggressive")]
    mean = lambda v: float(np.mean(v)) if v else float("nan")
    return {"agg_epochs": len(agg), "agg_epoch_s": mean(agg), "epoch_s": mean(plain)}


@contextlib.contextmanager
def record_of(path, holds):
    """Where a record is read: one that is not JSON or lacks a key that is read (a file cut short, of
    an older version, edited by hand) is one line naming the file and what it `holds`, never a
    traceback. Records are not checked field by field: what is read must be there."""
    try:
        yield
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else getattr(e, "strerror", None) or e
        raise UsageError(f"{path}: {why} ({holds})") from None


def typed(record, key, kind):
    """record[key] if it is of `kind` (str or int), so that a hand-edited record is refused where it is
    read, not where its value is sorted or compared."""
    v = record[key]
    if isinstance(v, bool) or not isinstance(v, kind):
        raise ValueError(f"{key!r} is {reprlib.repr(v)}, expected {'text' if kind is str else 'an integer'}")
    return v


def number(record, key):
    """record[key] as a float. JSON may hold NaN and Infinity (Python writes them): a table cell or a
    plotted point of one would pass for a number, so they are refused like text."""
    v = record[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key!r} is {reprlib.repr(v)}, expected a number")
    return float(v)


def run_state(run):
    """Why a run without result.json has none: its last log row says when it diverged (a row may be
    half written while the run goes on: then it is unfinished)."""
    try:
        last = json.loads(((run / "log.jsonl").read_bytes().splitlines() or [b"{}"])[-1])
        why = last.get("diverged") if isinstance(last, dict) else None
    except (OSError, ValueError):
        why = None
    return f"diverged at epoch {last.get('epoch')} ({why})" if why else "unfinished (no result.json yet)"


# Fields that say where and how a run was run, not what it computes: runs that differ only in these
# (and the seed) are the same experiment.
RUN_LOCAL = {"out", "resume", "overwrite", "device", "threads", "quiet", "data_dir", "progress_every",
             "checkpoint_minutes", "seed"}


def run_settings(run):
    """The fields of a run's config.json that its numbers depend on; None for a run without one."""
    path = run / "config.json"
    return ({k: v for k, v in read_run_config(path, "table").items() if k not in RUN_LOCAL}
            if path.is_file() else None)


def load_results(run_dirs, needs=("au", "mi")):
    """The result.json of each run, its TABLE_COLUMNS as floats (`needs` among them), with its settings
    (run_settings) and epoch_stats; an unfinished or diverged run (its lock, taken before any
    pretraining, or a config.json, but no result.json) is left out with a note on stderr saying which,
    so tables and figures of a grid can be made while it runs, and so is a file (`table runs/*` also
    matches the records beside the runs)."""
    results = []
    for d in map(Path, run_dirs):
        if d.is_file():
            print(f"lagvae: {d}: a file, not a run directory, left out", file=sys.stderr)
            continue
        if not (d / "result.json").exists() and any((d / f).exists() for f in (".lock", "config.json")):
            print(f"lagvae: {d}: {run_state(d)}, left out", file=sys.stderr)
            continue
        with record_of(d / "result.json", f"a result.json of `train` holds data, mode, seed, {', '.join(needs)}"):
            r = json_object((d / "result.json").read_text())
            r.update({c: number(r, c) for c in TABLE_COLUMNS if c in r or c in needs},
                     data=typed(r, "data", str), mode=typed(r, "mode", str), seed=typed(r, "seed", int))
        if (d / "log.jsonl").exists():
            with record_of(d / "log.jsonl", "a training log holds the seconds of each epoch"):
                r.update(epoch_stats(read_jsonl(d / "log.jsonl")))
        results.append({**r, "run": str(d), "settings": run_settings(d)})
    return results


def summarize(results, by_run=False, paper_data=None, paper_table=None):
    """Group by (data, mode), or one row per run: mean and std over seeds of TABLE_COLUMNS, collapse
    counts, and training time and gradient steps relative to basic VAE in the same dataset (by run:
    the one basic run of the same seed; none if there are several, e.g. two schedules). Step counts
    are deterministic, so step_ratio compares across machines and loads; time_ratio does not. Each
    row is set beside the paper's row of the same mode on `paper_data` (default: PAPER_DATA's
    stand-in, e.g. Yahoo for yahoo-small), the rule of the aggressive phase aside; `paper_table` picks
    the paper's table where a mode has rows in several."""
    groups = {}
    for r in results:
        settings = json.dumps(r.get("settings"), sort_keys=True)
        groups.setdefault((r["data"], r["mode"], settings, r["run"] if by_run else None), []).append(r)
    rows = []
    for (data, mode, _, _), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        row = {"data": data, "mode": mode, "runs": len(rs), "seeds": sorted(r["seed"] for r in rs),
               "settings": rs[0].get("settings")}
        if by_run:
            row["run"] = rs[0]["run"]
        for c in TABLE_COLUMNS:
            v = np.array([r.get(c, np.nan) for r in rs], dtype=float)       # e.g. no iw_nll: NaN
            row[c], row[c + "_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        states = [collapse_state(r) for r in rs]       # a model without a latent neither collapses nor escapes
        row.update({k: None if mode.startswith("lm") else states.count(k) for k in ("collapsed", "escaped", "between")})
        rows.append(row)
    for row in rows:
        row["differs"] = settings_apart(row, [p for p in rows if (p["data"], p["mode"]) == (row["data"], row["mode"])])
    paper = paper_results(table=paper_table)
    for row in rows:
        base = [b for b in rows if b["data"] == row["data"] and b["mode"] == "basic"
                and (not by_run or b["seeds"] == row["seeds"])]
        base = [b for b in base if b["differs"] == row["differs"]] if len(base) > 1 else base     # e.g. epochs=12
        for c, ratio in (("train_seconds", "time_ratio"), ("steps", "step_ratio")):
            ok = len(base) == 1 and np.isfinite(row[c]) and np.isfinite(base[0][c]) and base[0][c] > 0
            row[ratio] = row[c] / base[0][c] if ok else None      # no ratio for runs without step counts
        ref = paper.get((paper_data or PAPER_DATA.get(row["data"], row["data"]), row["mode"].replace("-adaptive", "")), {})
        row["paper_table"] = ref.get("table")
        for c in PAPER_COLUMNS:
            row["paper_" + c] = float(ref[c]) if ref.get(c) else None
    return rows


def settings_apart(row, peers):
    """What sets a row's runs apart from the other rows of its data and mode: `field=value` of each
    setting that differs among them ("" where none does)."""
    if row["settings"] is None:
        return "no config.json" if any(p["settings"] is not None for p in peers) else ""
    known = [p["settings"] for p in peers if p["settings"] is not None]
    fields = sorted({k for c in known for k in c if len({json.dumps(c.get(k)) for c in known}) > 1})
    return " ".join(f"{k}={row['settings'].get(k)}" for k in fields)


PAIRED_COLUMNS = {"iw_nll": "nll", "kl": "kl", "mi": "mi", "au": "au"}     # ours -> the paper's column


def paired(results, a, b, paper_data=None, level=0.95):
    """Mode B against mode A, seed by seed: runs of one seed share the initialization and the batch
    order, so B - A removes most of the seed's own luck. Per dataset and metric: the differences,
    their mean and sd, a t-interval, how many seeds have B below and above A, and the paper's B - A
    on `paper_data` (default: the dataset's stand-in). A seed with only one of the two runs is left
    out with a note on stderr."""
    from scipy import stats
    runs = {}
    for r in results:
        key = (r["data"], r["mode"], r["seed"])
        if key in runs:
            raise UsageError(f"--paired: two runs of {key[0]} {key[1]} seed {key[2]} "
                             f"({runs[key]['run']} and {r['run']}); give one per seed")
        runs[key] = r
    modes = sorted({m for _, m, _ in runs})
    for m in (a, b):
        if m not in modes:
            raise UsageError(f"--paired: no run of mode {m!r} among the run directories (found: {', '.join(modes)})")
    paper, rows = paper_results(), []
    for data in sorted({d for d, _, _ in runs}):
        seeds = {m: {s for d, mm, s in runs if d == data and mm == m} for m in (a, b)}
        for s in sorted(seeds[a] ^ seeds[b]):
            print(f"lagvae: {data} seed {s}: only {a if s in seeds[a] else b} has finished, left out of the pairs",
                  file=sys.stderr)
        both = sorted(seeds[a] & seeds[b])
        if not both:
            continue
        ref = paper_data or PAPER_DATA.get(data, data)
        pa, pb = paper.get((ref, a), {}), paper.get((ref, b), {})
        for c, pc in PAIRED_COLUMNS.items():
            d = np.array([runs[data, b, s].get(c, np.nan) - runs[data, a, s].get(c, np.nan) for s in both], dtype=float)
            if np.isnan(d).any():
                continue        # e.g. a run evaluated without IW-NLL
            n, mean = len(d), float(d.mean())
            sd = float(d.std(ddof=1)) if n > 1 else math.nan
            half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
            rows.append({"data": data, "a": a, "b": b, "metric": c, "seeds": both, "n": n,
                         "diffs": [float(x) for x in d], "mean": mean, "sd": sd, "ci_low": mean - half,
                         "ci_high": mean + half, "level": level, "b_lower": int((d < 0).sum()),
                         "b_higher": int((d > 0).sum()), "paper_data": ref,
                         "paper": float(pb[pc]) - float(pa[pc]) if pa.get(pc) and pb.get(pc) else None})
    for row in rows:
        row["verdict"] = paired_verdict(row)
    return rows


def paired_verdict(row):
    """What the interval says of the direction: B lower, B higher or undecided. The paper's B - A is
    set beside, never tested: its corpus and scale are not these runs'."""
    if math.isnan(row["ci_low"]):
        return "one seed: no interval"
    return "B lower" if row["ci_high"] < 0 else "B higher" if row["ci_low"] > 0 else "undecided"


PAIRED_CSV = ["data", "a", "b", "metric", "n", "seeds", "diffs", "mean", "sd", "ci_low", "ci_high", "level",
              "b_lower", "b_higher", "paper_data", "paper", "verdict"]


def format_paired(rows, fmt="md"):
    """Markdown: the per-seed differences rounded, with the interval and the paper's B - A beside; CSV:
    every field of each row (PAIRED_CSV) at full precision."""
    if fmt == "csv":
        cell = lambda r, c: (" ".join(f"{x:g}" for x in r[c]) if c in ("seeds", "diffs") else
                             f"{r[c]:.4f}" if isinstance(r[c], float) else "" if r[c] is None else str(r[c]))
        return write_table([[cell(r, c) for c in PAIRED_CSV] for r in rows], PAIRED_CSV, fmt)
    f = lambda v: "" if v is None or isinstance(v, float) and math.isnan(v) else f"{v:.2f}"
    cells = [[r["data"], f"{r['b']} − {r['a']}", r["metric"], str(r["n"]), " ".join(f"{x:+.2f}" for x in r["diffs"]),
              f"{r['mean']:+.2f}", f(r["sd"]), f"[{f(r['ci_low'])}, {f(r['ci_high'])}]" if r["n"] > 1 else "",
              str(r["b_lower"]), str(r["b_higher"]),
              f"{f(r['paper'])} ({r['paper_data']})" if r["paper"] is not None else "", r["verdict"]] for r in rows]
    return write_table(cells, ["data", "B − A", "metric", "seeds", "per seed", "mean", "sd", "95 % CI", "B < A",
                               "B > A", "paper B − A", "its CI alone"])


SPREAD_TABLE = {"aggressive": ("7", "Ours"), "basic": ("8", "VAE")}    # App. D: the mode -> its table


def load_evaluations(paths, command, read):
    """read(record) of the JSON that `command` wrote, one per file: what `read` takes must be there."""
    records = []
    for p in map(Path, paths):
        with record_of(p, f"the JSON of `{command}`"):
            records.append(read(json_object(p.read_text())))
    return records


def load_spreads(paths):
    """Tables 7 and 8 are made of these: each metric's mean and variance over the evaluation seeds."""
    return load_evaluations(paths, "eval --eval-seeds N", lambda r: {
        "data": typed(r, "data", str), "mode": typed(r, "mode", str), "eval_seeds": typed(r, "eval_seeds", int),
        "mean": {k: number(r["mean"], k) for k in r["mean"]}, "var": {k: number(r["var"], k) for k in r["var"]}})


def format_spread(spreads, paper_data=None, fmt="md"):
    """Tables 7 and 8 (App. D): one model evaluated with N seeds, mean (variance) of each metric, each
    row followed by the paper's row of the same table on `paper_data` (default: the stand-in)."""
    paper = {(r["table"], r["dataset"], r["row"].rsplit("(", 1)[1].rstrip(")")): r for r in paper_rows()
             if r["table"] in ("7", "8")}
    cell = lambda m, v: f"{m:.0f} ({v:.0f})" if m == int(m) and v == 0 else f"{m:.3f} ({v:.1e})"
    rows = []
    for s in spreads:
        table, who = SPREAD_TABLE.get(s["mode"], ("", s["mode"]))
        rows.append([s["data"], who + (f" (Table {table})" if table else ""), str(s["eval_seeds"]),
                     *(cell(s["mean"][k], s["var"][k]) if k in s["mean"] else "" for k in SPREAD_METRICS)])
        ref = paper_data or PAPER_DATA.get(s["data"], s["data"])
        mean, var = paper.get((table, ref, "mean")), paper.get((table, ref, "variance"))
        if mean and var:
            rows.append([f"{ref} (paper)", f"{who} (Table {table})", "10",
                         *(f"{mean[c]} ({var[c]})" for c in ("nll", "elbo", "kl", "mi", "au"))])
    return write_table(rows, ["data", "model (table)", "evaluation seeds", "IW-NLL", "−ELBO", "KL", "MI", "AU"], fmt)


def load_bounds(paths):
    """`eval --bound`'s records: the bound at each K (a string, as in JSON) as its mean and sd."""
    def read(r):
        if not r["bound"]:
            raise ValueError("'bound' holds no K")
        return {"data": typed(r, "data", str), "mode": typed(r, "mode", str), "seed": typed(r, "seed", int),
                "n": typed(r, "n", int), "exact": r["exact"] is True,
                "bound": {str(int(k)): {"mean": number(b, "mean"), "sd": number(b, "sd")} for k, b in r["bound"].items()}}
    return load_evaluations(paths, "eval --bound", read)


def exact_nll(bounds):
    """(data, seed, documents) -> the exact NLL of the model without a latent, from the bounds given."""
    return {(b["data"], b["seed"], b["n"]): b["bound"]["1"]["mean"] for b in bounds if b["exact"]}


def format_bounds(bounds, fmt="md"):
    """The bound against K, one row per model, mean ± sd over the groups of K draws, beside the exact
    NLL of the LM of the same seed on the same documents and what the model's largest-K bound exceeds it by."""
    lm = exact_nll(bounds)
    ks = sorted({int(k) for b in bounds if not b["exact"] for k in b["bound"]})
    rows = []
    for b in sorted((b for b in bounds if not b["exact"]), key=lambda b: (b["data"], b["mode"], b["seed"])):
        cells = [f"{b['bound'][str(k)]['mean']:.2f} ± {b['bound'][str(k)]['sd']:.2f}" if str(k) in b["bound"] else ""
                 for k in ks]
        ref = lm.get((b["data"], b["seed"], b["n"]))
        top = b["bound"][str(max(map(int, b["bound"])))]["mean"]
        rows.append([b["data"], b["mode"], str(b["seed"]), str(b["n"]), *cells,
                     *([f"{ref:.2f}", f"{top - ref:+.2f}"] if ref is not None else ["", ""])])
    return write_table(rows, ["data", "model", "seed", "documents", *(f"K = {k}" for k in ks), "LM (exact)",
                              f"K = {ks[-1] if ks else ''} − LM"], fmt)


INTEGER_COLUMNS = {"au", "steps", "agg_epochs", "paper_au"}      # counts: no decimals where they are whole
COMPACT_COLUMNS = ["iw_nll", "elbo", "kl", "mi", "au", "steps"]       # the table's default; --all for the rest


def format_cell(row, c, fmt="md"):
    v = row[c]
    if v is None or isinstance(v, float) and np.isnan(v):          # no paper number, no aggressive epoch
        return ""
    if isinstance(v, list):
        return " ".join(map(str, v))
    if not isinstance(v, float):
        return str(v)
    std = row.get(c + "_std")
    whole = c in INTEGER_COLUMNS and v == int(v) and (not std or std == int(std))
    num = (lambda x: f"{x:.0f}") if whole else (lambda x: f"{x:.2f}")
    return f"{num(v)} ({num(std)})" if fmt == "md" and c in TABLE_COLUMNS and row["runs"] > 1 else num(v)


def format_table(rows, fmt="md", columns=None):
    """Markdown (mean (std) over seeds) or CSV (every column, stds apart). columns: the metric columns
    of a Markdown table (default COMPACT_COLUMNS with the step ratio and the paper's NLL, KL, MI and AU;
    TABLE_COLUMNS: every one, the time ratio and the paper's time and hours too)."""
    full = fmt == "csv" or columns == TABLE_COLUMNS
    columns = TABLE_COLUMNS if full else columns or COMPACT_COLUMNS
    head = [*(["run"] if rows and "run" in rows[0] else []), "data", "mode",
            *(["differs"] if any(r.get("differs") for r in rows) else []), "seeds", "runs", "collapsed", "escaped",
            *columns, *(["time_ratio"] if full else []), "step_ratio", "paper_table",
            *("paper_" + c for c in (PAPER_COLUMNS if full else ["nll", "kl", "mi", "au"]))]
    stds = [c + "_std" for c in TABLE_COLUMNS] if fmt == "csv" else []
    return write_table([[format_cell(r, c, fmt) for c in head] + [f"{r[c]:.4f}" for c in stds] for r in rows],
                       head + stds, fmt)


def write_table(rows, columns, fmt="md"):
    """Every table printed: rows of formatted cells (strings) under `columns`, as Markdown or as CSV
    (a cell holding a comma or a quote is quoted)."""
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([columns, *rows])
        return out.getvalue().rstrip("\n")
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def table_text(run_dirs, format="md", by_run=False, columns=None, all=False, paper_data=None, paper_table=None,
               pair=None, spread=False, bound=False, claims=False):
    """The `table` command's output: a summary over seeds (default), per-seed differences of a pair of
    modes, Tables 7-8 (spread), the bound against K (bound) or the verdicts on the paper's claims."""
    if claims:
        return "\n\n".join(format_claims(p, format) for p in run_dirs)
    if spread:
        return format_spread(load_spreads(run_dirs), paper_data, format)
    if bound:
        return format_bounds(load_bounds(run_dirs), format)
    if pair:
        if by_run:
            raise UsageError("--paired: pairs runs by seed already; drop --by-run")
        return format_paired(paired(load_results(run_dirs), *pair, paper_data), format)
    bad = sorted(set(columns or []) - set(TABLE_COLUMNS))
    if bad:
        raise UsageError(f"--columns: unknown {', '.join(bad)} (expected some of {', '.join(TABLE_COLUMNS)})")
    return format_table(summarize(load_results(run_dirs), by_run, paper_data, paper_table), format,
                        TABLE_COLUMNS if all else columns)


# A verdict per claim of the paper, by one rule: the claim's direction (B - A below or above 0 over
# paired seeds; a collapse state in more or fewer than half the runs) is tested two-sided, and Holm's
# step-down rule over the claims of one of the paper's tables keeps that table's family-wise error at
# 5 %. A claim whose runs are too few for any outcome to reach 5 % (one seed; a count over five runs
# or fewer) is said to be so and left out of the family (Tarone's refinement: it could never be
# rejected, so it only costs the others power). A test at another corpus or scale decides the
# direction only; the magnitudes are shown beside.
CLAIM_FIELDS = ["table", "claim", "kind", "runs", "a", "b", "metric", "direction", "paper_data", "section"]
CLAIM_KINDS = {"paired": tuple(PAIRED_COLUMNS), "count": ("collapsed", "escaped", "between")}
ALPHA = 0.05


def holm(pvalues):
    """Holm's adjusted p-values: the k-th smallest (k = 1..m) times m - k + 1, kept non-decreasing and at
    most 1. A claim is decided at family-wise level alpha where its adjusted p-value is at most alpha,
    which is Holm's step-down rule."""
    adjusted, top = [1.0] * len(pvalues), 0.0
    for k, i in enumerate(sorted(range(len(pvalues)), key=lambda i: pvalues[i])):
        top = max(top, min(1.0, (len(pvalues) - k) * pvalues[i]))
        adjusted[i] = top
    return adjusted


def check_claim(claim, where):
    """One line naming the row of claims.csv that would otherwise be read as some other claim."""
    metrics = CLAIM_KINDS.get(claim["kind"])
    why = (f"kind {claim['kind']!r}, expected one of {', '.join(CLAIM_KINDS)}" if metrics is None else
           f"metric {claim['metric']!r}, expected one of {', '.join(metrics)}" if claim["metric"] not in metrics else
           f"direction {claim['direction']!r}, expected < or >" if claim["direction"] not in ("<", ">") else None)
    if why:
        raise UsageError(f"{where}: {why}")


def claim_test(claim, results):
    """(what we measured, its two-sided p-value or None where no outcome could reach ALPHA, the sign of the
    effect, the paper's number) for one claim, or None before its runs have finished. paired: B - A of
    `metric` over the seeds with both runs; count: how many runs of mode B are in the collapse state
    `metric`, against half of them."""
    from scipy import stats
    paper, ref = paper_results(), claim["paper_data"]
    pa, pb = paper.get((ref, claim["a"]), {}), paper.get((ref, claim["b"]), {})
    modes = {r["mode"] for r in results}
    if claim["kind"] == "paired":
        if not {claim["a"], claim["b"]} <= modes:
            return None
        row = next((r for r in paired(results, claim["a"], claim["b"]) if r["metric"] == claim["metric"]), None)
        if row is None:
            return None
        col, n, mean, sd = PAIRED_COLUMNS[claim["metric"]], row["n"], row["mean"], row["sd"]
        if n < 2:
            p, here = None, f"{mean:+.2f}, one seed"
        else:      # every seed the same difference: no spread to doubt it by
            p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else float(mean == 0)
            here = f"{mean:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], {n} seeds"
        theirs = f"{float(pb[col]) - float(pa[col]):+.2f}" if pa.get(col) and pb.get(col) else ""
        return here, p, np.sign(mean), theirs
    states = [collapse_state(r) for r in results if r["mode"] == claim["b"]]
    if not states:
        return None
    k, n = states.count(claim["metric"]), len(states)
    p = float(stats.binomtest(k, n, 0.5).pvalue) if 2 * 0.5 ** n <= ALPHA else None
    theirs = ", ".join(f"{c.upper()} {pb[c]}" for c in ("kl", "au") if pb.get(c))
    return f"{k} of {n} {claim['metric']}", p, np.sign(k - n / 2), theirs


def format_claims(path, fmt="md"):
    """The report's summary: one row per claim of `path` (a CSV of CLAIM_FIELDS, each naming its runs
    by a glob), the paper's number on its dataset beside ours, the Holm-adjusted p-value and the
    verdict. A claim whose runs have not finished says so and stays out of its table's family."""
    with record_of(path, f"a CSV of claims with the columns {', '.join(CLAIM_FIELDS)}"):
        with open(path, encoding="utf-8") as f:
            claims = list(csv.DictReader(f))
        runs = {}
        for n, c in enumerate(claims, 2):
            check_claim(c, f"{path}:{n}")
            if c["runs"] not in runs:
                runs[c["runs"]] = load_results(sorted(glob.glob(c["runs"])))
        tests = {i: claim_test(c, runs[c["runs"]]) for i, c in enumerate(claims)}
    verdicts, adjusted = {}, {}
    for table in dict.fromkeys(c["table"] for c in claims):
        family = [i for i, c in enumerate(claims) if c["table"] == table and tests[i] and tests[i][1] is not None]
        adjusted.update(zip(family, holm([tests[i][1] for i in family])))
    for i, c in enumerate(claims):
        if tests[i] is None:
            verdicts[i] = "not run"
        elif tests[i][1] is None:
            verdicts[i] = "too few runs to test"
        elif adjusted[i] > ALPHA:
            verdicts[i] = "undecided"
        else:
            verdicts[i] = "yes" if tests[i][2] == {"<": -1, ">": 1}[c["direction"]] else "no"
    rows = [[c["table"], c["claim"], f"{tests[i][3]} ({c['paper_data']})" if tests[i] and tests[i][3] else "",
             tests[i][0] if tests[i] else "no finished run yet", f"{adjusted[i]:.2g}" if i in adjusted else "",
             verdicts[i], f"[{c['section']}](#{re.sub(r'[^a-z0-9 -]', '', c['section'].lower()).replace(' ', '-')})"]
            for i, c in enumerate(claims)]
    return write_table(rows, ["paper", "claim", "paper's number", "ours", "p (Holm)", "verdict", "section"], fmt)


def read_means(path):
    """Posterior-mean records (snapshots or a trajectory): at least one, each with as many model as
    inference means (arrays), at least one of each."""
    records = read_jsonl(path)
    with record_of(path, "a record holds as many model_mean as inference_mean numbers"):
        if not records:
            raise ValueError("no records")
        for n, r in enumerate(records, 1):
            r.update({k: np.array(r[k], dtype=float) for k in ("model_mean", "inference_mean")})
            if r["model_mean"].shape != r["inference_mean"].shape or not r["model_mean"].size:
                raise ValueError(f"record {n} has {r['model_mean'].size} model means "
                                 f"and {r['inference_mean'].size} inference means")
    return records


def load_snapshots(run):
    """Snapshots of a run, one per iteration (the last recorded wins after a resume), in order."""
    path = Path(run) / "snapshots.jsonl"
    with record_of(path, "a snapshot holds its iter"):
        snaps = {s["iter"]: s for s in read_means(path)}
    return [snaps[k] for k in sorted(snaps)]


def run_mode(run):
    """'dataset: mode' of a run directory, for a figure's titles."""
    path = Path(run) / "config.json"
    with record_of(path, "a run's config.json holds its mode"):
        config = json.loads(path.read_text())
        mode, data = config["mode"], config.get("config", {}).get("data")
    return f"{data}: {mode}" if isinstance(data, str) else mode


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_posterior_means(runs, out, lim=3.0):
    """Figures 2/6: one row per run (e.g. basic, then aggressive), one panel per snapshot; each point
    is a validation example at (true posterior mean, inference-network mean), diagonal dashed."""
    plt = pyplot()
    rows = [(run_mode(r), load_snapshots(r)) for r in runs]
    cols = max(len(snaps) for _, snaps in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.8 * cols, 2.8 * len(rows)), squeeze=False)
    for i, (mode, snaps) in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            if j >= len(snaps):
                ax.axis("off")
                continue
            ax.scatter(snaps[j]["model_mean"], snaps[j]["inference_mean"], s=3, alpha=0.5)
            ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=f"{mode}, iter {snaps[j]['iter']}")
            ax.set_xlabel(r"model posterior mean $\mu_{x,\theta}$", fontsize=8)
            ax.set_ylabel(r"inference mean $\mu_{x,\phi}$", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_dynamics(runs, out):
    """Figure 5: validation MI, KL and aggregate KL(q(z)||p(z)) = KL - MI (Eq. 5) per epoch."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        path = Path(run) / "log.jsonl"
        log = read_jsonl(path)
        with record_of(path, "a training log holds epoch, val_mi and val_kl"):
            epochs, mi, kl = (np.array([number(r, k) for r in log]) for k in ("epoch", "val_mi", "val_kl"))
        ax.plot(epochs, mi, label="MI")
        ax.plot(epochs, kl, label="KL")
        # Both MI and KL - MI are Monte Carlo estimates: on a collapsed model either may dip below 0.
        ax.plot(epochs, kl - mi, label="KL(q(z)||p(z)), estimated")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="epoch", ylabel="nats", title=run_mode(run))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_nll_au(runs, out):
    """Figure 4: test NLL against active units, one point per run, one marker per mode."""
    plt = pyplot()
    results = load_results(runs, ("au", "mi", "iw_nll"))
    modes = sorted({r["mode"] for r in results})
    fig, ax = plt.subplots(figsize=(7, max(3.6, 0.2 * len(modes))))
    for k, mode in enumerate(modes):        # modes 20 apart share a colour, never a marker too
        pts = [(r["au"], r["iw_nll"]) for r in results if r["mode"] == mode]
        ax.scatter(*zip(*pts), marker="os^vD<>px*"[(k + k // 20) % 10], color=plt.cm.tab20(k % 20), label=mode)
    ax.set(xlabel="AU", ylabel="NLL", title=", ".join(sorted({r["data"] for r in results})))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_trajectory(runs, out, lim=3.0):
    """Figure 3: one example's (true posterior mean, inference mean) after every update of the first
    generator steps; encoder-only steps move it vertically, generator steps horizontally."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        pts = read_means(Path(run) / "trajectory.jsonl")
        xs = [p["model_mean"][0] for p in pts]
        ys = [p["inference_mean"][0] for p in pts]
        ax.plot(xs, ys, "-", lw=0.6, color="0.6")
        for step, color in (("encoder", "tab:blue"), ("decoder", "tab:red"), ("joint", "tab:green")):
            sel = [i for i, p in enumerate(pts) if p.get("step") == step]
            if sel:
                ax.scatter([xs[i] for i in sel], [ys[i] for i in sel], s=6, color=color, label=f"{step} update")
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel=r"model posterior mean $\mu_{x,\theta}$",
               ylabel=r"inference mean $\mu_{x,\phi}$",
               title=run_mode(run))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_bound(paths, out):
    """The IW bound against the number of samples K (log scale), one line per model with its spread
    over groups, and the exact NLL of each seed's LM as a grey line of the seed's style: the gap left at
    the largest K is the model's, the rest the estimator's."""
    plt = pyplot()
    bounds = load_bounds(paths)
    fig, ax = plt.subplots(figsize=(6, 4))
    modes = sorted({b["mode"] for b in bounds if not b["exact"]})
    seeds = sorted({b["seed"] for b in bounds})          # a seed's models and its LM share a line style
    for b in bounds:
        style = ("-", "--", ":", "-.")[seeds.index(b["seed"]) % 4]
        if b["exact"]:
            ax.axhline(b["bound"]["1"]["mean"], color="grey", ls=style, lw=0.8, label=f"LM, seed {b['seed']} (exact)")
            continue
        ks = sorted(map(int, b["bound"]))
        ax.errorbar(ks, [b["bound"][str(k)]["mean"] for k in ks], [b["bound"][str(k)]["sd"] for k in ks],
                    color=plt.cm.tab10(modes.index(b["mode"])), ls=style, marker="o", ms=3, capsize=2,
                    label=f"{b['mode']}, seed {b['seed']}")
    ax.set(xscale="log", xlabel="importance samples K", ylabel="IW bound on NLL (nats)",
           title=", ".join(sorted({b["data"] for b in bounds})) + f" ({bounds[0]['n']} test documents)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))   # outside: inside, it hides lines
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


FIGURES = {"posterior": plot_posterior_means, "dynamics": plot_dynamics, "nll-au": plot_nll_au,
           "trajectory": plot_trajectory, "bound": plot_bound}


# ------------------------------------------------------------------------------------------------
# 9. Benchmark: what a step of each kind costs, in one process, so the ratios hold whatever the load.

BENCH_KINDS = ("joint", "encoder", "decoder", "savae", "eval", "iw_nll")


def bench_inputs(cfg, steps):
    """What every timed call reads: the corpus, its first `steps` training batches and first 10
    validation batches, on the device."""
    device = use_device(cfg)
    corpus = load_data(cfg)
    train = corpus.batches("train", cfg.batch_size, np.random.default_rng(0))[:steps]
    batches = [corpus.prepare(b).to(device) for b in train]
    val = [b.to(device) for b in corpus.batches("valid", cfg.batch_size, limit=10 * cfg.batch_size)]
    return corpus, batches, val, device


def bench_calls(lib, cfg, corpus, batches, val, device):
    """kind -> (a call doing one unit of that work, examples per call), on the model and optimizers of a
    lagvae module `lib` (this one, or an older checkout's: tools/bench_compare.py), built from the seed."""
    lib.seed_all(cfg.seed)
    model = lib.build_model(cfg, corpus).to(device)
    opts = lib.make_optimizers(model, cfg, cfg.lr)
    savae = dataclasses.replace(cfg, savae=True)
    x = lambda i: batches[i % len(batches)]
    return {"joint": (lambda i: lib.update(model, opts, x(i), cfg, "all"), len(x(0))),
            "encoder": (lambda i: lib.update(model, opts, x(i), cfg, "encoder"), len(x(0))),
            "decoder": (lambda i: lib.update(model, opts, x(i), cfg, "decoder"), len(x(0))),
            "savae": (lambda i: lib.update(model, opts, x(i), savae, "all"), len(x(0))),
            "eval": (lambda i: lib.evaluate(model, val, cfg, desc="bench"), sum(map(len, val))),
            "iw_nll": (lambda i: bench_iw_nll(model, lib, x(i), cfg), len(x(0)))}


@in_eval_mode
def bench_iw_nll(model, lib, x, cfg):
    """IW-NLL at K=500 as evaluation runs it: in eval mode (no dropout masks) and without a graph."""
    lib.iw_nll(model, x, 500, cfg.iw_chunk)


def time_calls(calls, steps, rounds, device):
    """(version, kind) -> median seconds per call over `rounds` (each timing `steps` calls, one of eval and
    iw_nll, after a warm-up round), and peak memory in MiB (CUDA: allocated by that kind; CPU: the
    process's resident high-water mark after it). calls: version -> bench_calls; every version is timed
    in every round, so versions compare under one load."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times, peak = {}, {}
    for r in range(rounds + 1):                       # round 0 is the warm-up
        for name, kinds in calls.items():
            for kind, (call, _) in kinds.items():
                n = 1 if kind in ("eval", "iw_nll") else steps
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync()
                t = time.perf_counter()
                for i in range(n):
                    call(i)
                sync()
                if r:
                    times.setdefault((name, kind), []).append((time.perf_counter() - t) / n)
                peak[name, kind] = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
                                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    return {k: float(np.median(v)) for k, v in times.items()}, peak


def bench_result(cfg, device, steps, rounds, calls, sec, peak):
    """time_calls' numbers as rows (ms per call, examples per second, ratio to the joint step, peak
    memory), with the ratios inner / joint and SA-VAE / basic of the current version."""
    rows = [{"version": name, "kind": kind, "ms": 1e3 * sec[name, kind],
             "examples_per_s": calls[name][kind][1] / sec[name, kind],
             "vs_joint": sec[name, kind] / sec[name, "joint"], "peak_mb": peak[name, kind]}
            for name in calls for kind in BENCH_KINDS]
    return {"data": cfg.data, "preset": cfg.preset, "device": str(device), "threads": torch.get_num_threads(),
            "steps": steps, "rounds": rounds, "batch_size": cfg.batch_size,
            "inner_over_joint": sec["current", "encoder"] / sec["current", "joint"],
            "savae_over_basic": sec["current", "savae"] / sec["current", "joint"], "rows": rows}


def bench(overrides, steps=20, rounds=5):
    """What a step of each kind costs for the model that `overrides` (train flags) describe: bench_result."""
    cfg = resolve_config({**overrides, "quiet": True})
    inputs = bench_inputs(cfg, steps)
    calls = {"current": bench_calls(sys.modules[__name__], cfg, *inputs)}
    return bench_result(cfg, inputs[-1], steps, rounds, calls, *time_calls(calls, steps, rounds, inputs[-1]))


def format_bench(result):
    cols = list(result["rows"][0])          # tools/bench_compare.py adds a speedup column
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in result["rows"]]
    return "\n".join([f"{result['data']} / {result['preset']} on {result['device']}, {result['threads']} thread(s); "
                      f"median of {result['rounds']} rounds of {result['steps']} steps (eval: the first 10 validation "
                      f"batches; iw_nll: K=500)", write_table(cells, cols),
                      f"inner / joint {result['inner_over_joint']:.2f}, "
                      f"SA-VAE / basic {result['savae_over_basic']:.2f}"])


# ------------------------------------------------------------------------------------------------
# 10. CLI

def add_config_flags(parser):
    """One flag per Config field, in the --help groups the fields open, its help the field's with the
    default and every preset that changes it. Defaults are left unset so presets can fill them."""
    group = parser
    for f in dataclasses.fields(Config):
        group = parser.add_argument_group(f.metadata["group"]) if f.metadata["group"] else group
        shown = "on" if f.default is True else "off" if f.default is False else f.default
        presets = [f"{'image ' if kind == 'image' else ''}{name} {values[f.name]}" for kind, ps in PRESETS.items()
                   for name, values in ps.items() if f.name in values and values[f.name] != f.default]
        note = "; ".join(([f"default {shown}"] if shown != "" else [])
                         + (["presets: " + ", ".join(presets)] if presets else []))
        text = (f.metadata["help"] + (f" [{note}]" if note else "")).replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, type=f.type, default=argparse.SUPPRESS, metavar=f.name.upper(), help=text)


def add_field_flag(parser, name, note):
    """A Config field as a flag of a command on a saved model, with the field's own help; unset (None),
    the run's value stands."""
    f = next(f for f in dataclasses.fields(Config) if f.name == name)
    parser.add_argument("--" + name.replace("_", "-"), type=f.type, default=None, metavar=name.upper(),
                        help=f"{f.metadata['help']} ({note})")


def positive(typ):
    """An argparse type: a number of type typ above 0."""
    def parse(text):
        try:
            value = typ(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {typ.__name__}, got {text!r}")
        return value
    return parse


def sample_counts(text):
    """An argparse type: comma-separated sample counts, each dividing the largest (disjoint groups)."""
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1 or ks[-1] > 10 ** 6 or any(ks[-1] % k for k in ks):
        raise argparse.ArgumentTypeError(f"expected sample counts in [1, 1000000] that each divide the largest, "
                                         f"like 1,50,500,5000, got {text!r}")
    return ks


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # A prefix of a flag is an error, never another flag: `eval --data X` is not --data-dir X.
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        """One line in the form of every other error: `lagvae: error: train: argument --nz: ...`."""
        command = self.prog.partition(" ")[2]
        self.exit(2, error_line(f"{command}: {message}" if command else message) + "\n")


def build_parser():
    """The CLI: one subparser per command, each naming the function that runs it (func); the train and
    bench flags one per Config field, the flags of the commands on a saved model declared once."""
    intro, examples = __doc__.split("\n\n")[:2]
    ap = Parser(prog="lagvae", description=f"{intro}\n\nexamples:\n{examples}",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True, parser_class=Parser)
    tr = sub.add_parser(
        "train", help="train a VAE (flags map onto Config fields)",
        description="Train a VAE. A preset (--preset) fills the fields first and explicit flags override it; "
                    "[brackets] give the default and each preset that differs from it.")
    tr.add_argument("--config", default=argparse.SUPPRESS, metavar="RUN/config.json",
                    help="start from a run's saved config (a fork); the flags given override it, and the run "
                         "directory is new (--out, or the default name)")
    add_config_flags(tr)
    tr.set_defaults(func=train_command)
    saved = Parser(add_help=False)          # the flags of every command on a saved model
    saved.add_argument("--ckpt", required=True, help="a model.pt of a run directory")
    saved.add_argument("--data-dir", default=None,
                       help="data root (default: the run's, else $LAGVAE_DATA, else ./data)")
    saved.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_field_flag(saved, "threads", "default: the run's")
    ev = sub.add_parser("eval", parents=[saved], help="evaluate a saved model on its test split")
    ev.set_defaults(func=lambda **args: json.dumps(evaluate_checkpoint(**args), indent=2))
    for name in ("iw_samples", "mi_samples", "max_test"):
        add_field_flag(ev, name, "default: the run's")
    ev.add_argument("--update", action="store_true",
                    help="write the evaluation into the run's result.json, printing each number that changes")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    ev.add_argument("--eval-seeds", type=positive(int), default=None, metavar="N",
                    help="evaluate N times with the noise of seeds 0..N-1 and report mean and variance "
                         "(the paper's Tables 7 and 8)")
    ev.add_argument("--bound", type=sample_counts, default=None, metavar="K,K,...",
                    help="the IW bound at each K (e.g. 1,50,500,5000; each divides the largest) from the same "
                         "draws, with its spread over disjoint groups of K; --eval-seeds N draws N times")
    ev.add_argument("--test", default=None, metavar="FILE",
                    help="text: score the model on this file (one document a line) instead of its test split, "
                         "read with the model's own vocabulary and cuts as its test split was; no data files "
                         "are needed")
    sp = sub.add_parser("samples", parents=[saved],
                        help="prior samples and test reconstructions: a PNG grid or a text file")
    sp.set_defaults(func=write_samples)
    sp.add_argument("--out", default=None, help="default: samples.png or samples.txt beside the checkpoint")
    sp.add_argument("--n", type=positive(int), default=None,
                    help="prior samples and test reconstructions (default: 32 images, a multiple of 8, or 10 texts)")
    sp.add_argument("--decode", dest="method", choices=["greedy", "sample", "beam"], default=None,
                    help="text: how to generate from p(x|z) (default: greedy)")
    sp.add_argument("--beam-size", type=positive(int), default=None, help="text, --decode beam (default: 5)")
    sp.add_argument("--temperature", type=positive(float), default=None,
                    help="text, --decode sample: divides the logits, 1e-6 to 1e6; -> 0 is greedy (default: 1)")
    sp.add_argument("--max-len", type=positive(int), default=None,
                    help="text: most tokens per sentence, </s> included (default: the longest test document)")
    sp.add_argument("--interpolate", type=int, nargs=2, default=None, metavar=("I", "J"),
                    help="text: also decode 7 points between the posterior means of test documents I and J")
    sp.add_argument("--reconstruct", default=None, metavar="FILE",
                    help="text: reconstruct these sentences (one a line; - reads stdin) instead of test documents; "
                         "no data files are needed")
    en = sub.add_parser("encode", parents=[saved],
                        help="posterior means, log-variances (and labels) of a split to an .npz")
    en.set_defaults(func=export_latents)
    en.add_argument("--split", choices=list(datalib.SPLITS), default="test", help="default: test")
    en.add_argument("--out", default=None, help=".npz path (default: latents.SPLIT.npz beside the checkpoint)")
    en.add_argument("--input", default=None, metavar="FILE",
                    help="text: encode these sentences (one a line; - reads stdin) instead of a split; no data files "
                         "are needed (default out: latents.input.npz)")
    fg = sub.add_parser("figure", help="the paper's figures from run directories (PNG)")
    fg.set_defaults(func=figure_command)
    fg.add_argument("kind", choices=list(FIGURES))
    fg.add_argument("run_dirs", nargs="+")
    fg.add_argument("--out", required=True, help="PNG path")
    bn = sub.add_parser("bench", help="time each kind of step in one process (any train flag picks the model)")
    bn.set_defaults(func=bench_command)
    add_config_flags(bn)
    bn.add_argument("--steps", type=positive(int), default=20, help="timed calls per kind and round (default 20)")
    bn.add_argument("--rounds", type=positive(int), default=5, help="rounds, the median is reported (default 5)")
    bn.add_argument("--json", dest="json_file", default=None, metavar="JSON",
                    help="also write the result as JSON to this file")
    tb = sub.add_parser("table", help="mean (std) over seeds of run directories, by dataset and mode")
    tb.set_defaults(func=table_text)
    tb.add_argument("run_dirs", nargs="+")
    tb.add_argument("--format", choices=["md", "csv"], default="md")
    tb.add_argument("--by-run", action="store_true", help="one row per run instead of mean (std) over seeds")
    tb.add_argument("--columns", type=lambda v: v.split(","), default=None, metavar="A,B,...",
                    help=f"the metric columns of a Markdown table (default {','.join(COMPACT_COLUMNS)}; "
                         f"any of {','.join(TABLE_COLUMNS)})")
    tb.add_argument("--all", action="store_true", help="every column (as CSV always has)")
    tb.add_argument("--paper-data", choices=sorted({d for d, _ in paper_results()}), default=None,
                    help="set every row beside the paper's numbers for this dataset (e.g. yelp for Tables 4 and 10)")
    tb.add_argument("--paper-table", choices=sorted({t for r in paper_results().values() for t in r["table"].split("+")},
                                                    key=int), default=None,
                    help="where a mode has rows in several of the paper's tables, take this table's (e.g. 4, 9, 10)")
    tb.add_argument("--paired", dest="pair", nargs=2, metavar=("A", "B"), default=None,
                    help="per-seed differences B - A of two modes (e.g. basic aggressive): mean, sd, 95%% t-interval, "
                         "sign counts and the paper's B - A")
    tb.add_argument("--spread", action="store_true",
                    help="Tables 7 and 8: the arguments are JSON files of `eval --eval-seeds N`, not run directories")
    tb.add_argument("--bound", action="store_true",
                    help="the bound against K: the arguments are JSON files of `eval --bound`, not run directories")
    tb.add_argument("--claims", action="store_true",
                    help="the report's summary: the arguments are CSV files of the paper's claims (claims.csv), each "
                         "naming its runs; a verdict per claim, Holm-corrected over the claims of each paper table")
    rp = sub.add_parser("report", help="rewrite the tables of RESULTS.md from the records under runs/")
    rp.set_defaults(func=report)
    rp.add_argument("path", nargs="?", default="RESULTS.md", help="default: RESULTS.md (run from the repository root)")
    rp.add_argument("--check", action="store_true",
                    help="write nothing; fail if a table differs from its records or the prose cites a number "
                         "that no table and no row of the paper holds")
    return ap


# RESULTS.md's tables sit in blocks headed by the `table` command that makes them (run from the
# repository root), so that `report` rewrites each from the committed records and a test can say
# when one no longer matches them. A decimal number in the prose must be one of a block's or the
# paper's (whole numbers are counts and sizes of the setup: not checked; nor are signs).
REPORT_HEAD = "<!-- lagvae.py "
REPORT_BLOCK = re.compile(r"(<!-- lagvae\.py (table [^\n]*?) -->\n)((?:(?!<!-- lagvae\.py ).)*?)(?=<!-- end -->)", re.S)
DECIMAL = re.compile(r"\d+(?:,\d{3})*\.\d+")          # 1,234.5 is one number
NOT_PROSE = re.compile(r"`[^`\n]*`|\]\([^)\n]*\)|https?://\S+|\d+(?:\.\d+){2,}")  # code, links, versions


def decimals(text):
    return {d.replace(",", "") for d in DECIMAL.findall(text)}


def untraced_numbers(text, paper_csv=PAPER_CSV):
    """The decimal numbers of `text`'s prose that no block and no row of the paper holds."""
    known = decimals("".join(m[0] for m in REPORT_BLOCK.finditer(text)))
    known |= decimals(Path(paper_csv).read_text(encoding="utf-8"))
    return sorted(decimals(NOT_PROSE.sub("", REPORT_BLOCK.sub("", text))) - known, key=float)


def render_block(m, path):
    """A block of the report made anew by its command, each glob among its arguments expanded (sorted)."""
    argv = []
    for arg in m.group(2).split():
        matched = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matched:
            raise UsageError(f"{path}: `{m.group(2)}`: {arg} matches nothing")
        argv += matched
    try:
        args = vars(build_parser().parse_args(argv))
    except SystemExit:       # argparse has said why on stderr
        raise UsageError(f"{path}: `{m.group(2)}` is not a table command") from None
    del args["cmd"], args["func"]
    return m.group(1) + table_text(**args) + "\n"


def report(path="RESULTS.md", check=False):
    """Rewrites every block of `path` from the records its command names; with check, writes nothing
    and refuses a file whose blocks differ from what their commands make now, or whose prose has a
    number that neither a block nor the paper has."""
    old = Path(path).read_text(encoding="utf-8")
    blocks = list(REPORT_BLOCK.finditer(old))
    if not len(blocks) == old.count(REPORT_HEAD) == old.count("<!-- end -->"):
        raise UsageError(f"{path}: {old.count(REPORT_HEAD)} block heads, {old.count('<!-- end -->')} ends and "
                         f"{len(blocks)} whole blocks; each `{REPORT_HEAD}table ... -->` line needs its own "
                         f"`<!-- end -->`")
    new = REPORT_BLOCK.sub(lambda m: render_block(m, path), old)
    stale = [a.group(2) for a, b in zip(blocks, REPORT_BLOCK.finditer(new)) if a[0] != b[0]]
    untraced = untraced_numbers(old)
    if check and stale:
        raise UsageError(f"{path}: {len(stale)} block(s) differ from their records (`lagvae.py report` "
                         f"rewrites them): {'; '.join(stale)}")
    if check and untraced:
        raise UsageError(f"{path}: numbers in the prose that no generated block and no row of the paper "
                         f"hold: {', '.join(untraced)}")
    if not check and new != old:
        write_atomic(Path(path), new.encode())
    return f"{path}: {len(blocks)} blocks, {len(stale)} rewritten" + (" (checked only)" if check else "")


def forked_config(path, flag="--config", left=("out", "resume", "overwrite")):
    """The fields of a run's config.json, less `left`: where it ran and how it was started."""
    saved = read_run_config(path, flag)
    fields = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in saved.items() if k in fields and k not in left}


def with_run_decays(overrides):
    """--decay-at RUN as the decay epochs of the run RUN, read here so that resolve_config reads no file."""
    run = overrides.get("decay_at")
    if isinstance(run, str) and os.path.isdir(run):
        return {**overrides, "decay_at": decays_of_run(Path(run))}
    return overrides


def train_config(args):
    """The train command's config from its flags, and whether it may generate data."""
    resumed = Path(args.get("out", ""), "config.json") if args.get("resume") and args.get("out") else None
    # A resume continues the run's own settings: only the flags given change (those --resume may).
    base = (forked_config(args.pop("config")) if "config" in args else
            forked_config(resumed, "--resume", ("out", "resume", "overwrite", "quiet"))
            if resumed and resumed.is_file() else {})
    # A fork reads its data under the parent's data_dir but makes none there: data is generated
    # only under a root that the command line, $LAGVAE_DATA or ./data names.
    return resolve_config(with_run_decays({**base, **args})), not base.get("data_dir") or "data_dir" in args


def train_command(**args):
    cfg, generate = train_config(args)
    train(cfg, generate=generate)


def bench_command(steps, rounds, json_file, **overrides):
    result = bench(with_run_decays(overrides), steps, rounds)
    print(format_bench(result))
    print(json.dumps(result))
    if json_file:
        Path(json_file).write_text(json.dumps(result, indent=2))


def figure_command(kind, run_dirs, out):
    from matplotlib.backend_bases import FigureCanvasBase
    output_file(out, FigureCanvasBase.get_supported_filetypes())
    FIGURES[kind](run_dirs, out)
    return out


def main(argv=None):
    """Runs a command; what it returns is printed. Every error a user can cause is one line and exit 2."""
    args = vars(build_parser().parse_args(argv))
    del args["cmd"]
    try:
        text = args.pop("func")(**args)
        if text is not None:
            print(text)
    except (UsageError, datalib.DataError, OSError) as e:
        return fail(e)
    except Interrupted as e:
        if sys.stderr.isatty():       # after the terminal's echo of ^C: the message starts its own line
            print(file=sys.stderr)
        fail(e)
        return e.exit_code
    except (MemoryError, RuntimeError) as e:
        # CPU allocation failures are plain RuntimeErrors ("can't allocate memory"); CUDA's are
        # torch.OutOfMemoryError. Anything else is a bug and keeps its traceback.
        if not isinstance(e, (MemoryError, torch.OutOfMemoryError)) and "can't allocate memory" not in str(e):
            raise
        return fail(f"out of memory ({e}); lower --batch-size, --iw-samples or the model sizes "
                    f"(--ni, --enc-nh, --dec-nh, --nz)")
    return 0


def error_line(message):
    """Exactly one line, whatever the message holds (errors from torch and others can be multi-line)."""
    return "lagvae: error: " + " ".join(str(message).split())


def fail(message):
    print(error_line(message), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
