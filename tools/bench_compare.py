"""Developer tool: `lagvae.py bench` against an older checkout's lagvae.py, timed in the same rounds of one
process (so a speed-up is measured under one load), and where each kind of step spends its time.

    python tools/bench_compare.py --baseline DIR [train flags] [--steps 20 --rounds 5] [--json FILE] [--profile N]

DIR holds the older lagvae.py (e.g. `git worktree add /tmp/old HEAD~5`); the other flags are those of
`python lagvae.py bench`. Each row gains `speedup` (the baseline's seconds over this row's); `--profile N`
then runs each kind of this version under torch.profiler and lists its N costliest operators.
"""
import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lagvae  # noqa: E402


def load_baseline(folder):
    path = Path(folder) / "lagvae.py"
    if not path.is_file():
        raise lagvae.UsageError(f"--baseline {folder}: no lagvae.py there (expected a checkout of an older version)")
    spec = importlib.util.spec_from_file_location("lagvae_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(overrides, baseline, steps=20, rounds=5, profile=0):
    """lagvae.bench's result with the baseline's rows after this version's, and each row's speedup."""
    cfg = lagvae.resolve_config(lagvae.with_run_decays({**overrides, "quiet": True}))
    inputs = lagvae.bench_inputs(cfg, steps)
    old = load_baseline(baseline)
    known = {f.name for f in dataclasses.fields(old.Config)}       # an older Config may lack newer fields
    old_cfg = old.resolve_config({k: v for k, v in dataclasses.asdict(cfg).items() if k in known})
    calls = {"current": lagvae.bench_calls(lagvae, cfg, *inputs), "baseline": lagvae.bench_calls(old, old_cfg, *inputs)}
    sec, peak = lagvae.time_calls(calls, steps, rounds, inputs[-1])
    result = lagvae.bench_result(cfg, inputs[-1], steps, rounds, calls, sec, peak)
    for row in result["rows"]:
        row["speedup"] = sec["baseline", row["kind"]] / sec[row["version"], row["kind"]]
    if profile:
        result["profile"] = profile_calls(calls["current"], steps, profile, inputs[-1])
    return result


def profile_calls(kinds, steps, top, device):
    """kind -> its `top` operators by self time (on CUDA: device time) per call, with calls per call
    and share of the total: where a step's time goes, e.g. SA-VAE's thousands of small LSTM ops."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    out = {}
    for kind, (call, _) in kinds.items():
        n = 1 if kind in ("eval", "iw_nll") else steps
        with profile(activities=acts) as prof:
            for i in range(n):
                call(i)
            if cuda:
                torch.cuda.synchronize()
        ops = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
        total = sum(getattr(e, key) for e in ops) or 1.0
        out[kind] = [{"op": e.key, "calls": e.count / n, "ms": getattr(e, key) / 1e3 / n,
                      "share": getattr(e, key) / total} for e in ops[:top]]
    return out


def format_profile(profile):
    rows = [[kind, o["op"], f"{o['calls']:.1f}", f"{o['ms']:.3f}", f"{o['share']:.1%}"]
            for kind, ops in profile.items() for o in ops]
    return lagvae.write_table(rows, ["kind", "op", "calls per call", "ms per call", "share of self time"])


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"bench_compare: error: {message}\n")


def main(argv=None):
    ap = Parser(prog="bench_compare", allow_abbrev=False, description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="DIR", help="a folder holding an older lagvae.py")
    ap.add_argument("--profile", type=lagvae.positive(int), default=0, metavar="N", help="list each kind's N costliest operators")
    own, rest = ap.parse_known_args(argv)
    args = vars(lagvae.build_parser().parse_args(["bench", *rest]))       # the flags of `lagvae.py bench`
    opts = {k: args.pop(k) for k in ("cmd", "func", "steps", "rounds", "json_file")}
    try:
        result = compare(args, own.baseline, opts["steps"], opts["rounds"], own.profile)
        print(lagvae.format_bench(result))
        if own.profile:
            print(format_profile(result["profile"]))
        print(json.dumps(result))
        if opts["json_file"]:
            Path(opts["json_file"]).write_text(json.dumps(result, indent=2))
    except Exception as e:      # the baseline's errors are its own module's classes, of the same names
        if not isinstance(e, OSError) and type(e).__name__ not in ("UsageError", "DataError", "DataMissing"):
            raise
        print(f"bench_compare: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
