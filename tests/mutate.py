"""Mutation testing of the core with mutmut (not a test module; not in CI: hours, not minutes).

    .venv/bin/pip install -r requirements-dev.txt
    .venv/bin/python tests/mutate.py            # mutate, run the fast lane per mutant, print the score and survivors
    .venv/bin/python tests/mutate.py --list     # only the mutmut name patterns it would run
    .venv/bin/python tests/mutate.py Objectives data    # some of: Objectives, Training modes, Evaluation, data
    .venv/bin/python tests/mutate.py --max-children 1   # one test process at a time (default: one per core)
    .venv/bin/python tests/mutate.py --sample 300 --seed 0    # a random 300 of the mutants: an estimated score
    .venv/bin/python tests/mutate.py --sample 300 --seed 0 --report   # the score so far, from mutmut's records
    .venv/bin/python tests/mutate.py --sample 300 --seed 0 --retry-survivors  # after new tests: the survivors again

It mutates the functions of lagvae.py's sections on objectives and estimators, training modes and
evaluation and data.py's split logic, one small change at a time (mutmut's operators: a number, an
operator, a comparison, a string, an argument...), and runs for each mutant the tests that reach the
mutated function, with `-m "not slow"`. A mutant no test kills is a line whose bug would go unnoticed.

mutmut mutates whole files, and a module where every function carries all its mutants is ~16 MB of
Python that every test process must import. So it runs on a staged copy under .mutate/ (git-ignored)
in which everything outside the chosen sections is fenced off by `# pragma: no mutate start/end`:
only the chosen functions are rewritten, and the code under test stays free of tool comments.
`cd .mutate && ../.venv/bin/mutmut show NAME` prints a survivor's diff. mutmut leaves decorated
functions alone (e.g. `idle_side_frozen`, `posterior_mean_grid`). The staged copy is rewritten only
where the sources changed, so mutmut's test-to-function map (its stats pass over the whole fast lane)
is reused by the next run.

The sections hold ~2,900 mutants; at several seconds each the whole set is a night on two cores.
`--sample N` runs a uniform random N of them (seeded) and reports the score with a 95 % Wilson interval
for the whole set: the habit for a session, the full run for a release.
"""
import ast
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutate"
SECTIONS = ("Objectives", "Training modes", "Evaluation")     # lagvae.py's "# N. Title" headers
DATA_SPLITS = ("text_spec", "text_corpus", "load_omniglot", "split_drawers", "length_buckets")


def section_of_lines(source):
    """line number -> the title's first words of the `# N. Title` header above it."""
    sections, current = {}, None
    for n, line in enumerate(source.splitlines(), 1):
        m = re.match(r"# \d+\. (\w+(?: modes)?)", line)
        if m:
            current = m.group(1)
        sections[n] = current
    return sections


def chosen_nodes(sections):
    """{file: the top-level functions and classes mutated}: lagvae.py's in `sections` by title, and
    data.py's split functions if "data" is among them."""
    source = (ROOT / "lagvae.py").read_text()
    section = section_of_lines(source)
    chosen = {"lagvae.py": [n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                            and section[n.lineno] in sections]}
    chosen["data.py"] = [n for n in ast.parse((ROOT / "data.py").read_text()).body
                         if isinstance(n, ast.FunctionDef) and n.name in DATA_SPLITS and "data" in sections]
    return chosen


def patterns(sections=SECTIONS + ("data",)):
    """mutmut's names for the mutants of the chosen functions: module.x_function__mutmut_N and
    module.xǁClassǁmethod__mutmut_N."""
    out = []
    for file, nodes in chosen_nodes(sections).items():
        module = file[:-3]
        for node in nodes:
            if isinstance(node, ast.FunctionDef):
                out.append(f"{module}.x_{node.name}__mutmut_*")
            else:
                out += [f"{module}.xǁ{node.name}ǁ{f.name}__mutmut_*" for f in node.body if isinstance(f, ast.FunctionDef)]
    return out


def fence(source, keep):
    """`source` with every run of top-level statements not starting on a line of `keep` between `# pragma: no mutate
    start` and `# pragma: no mutate end` (mutmut then leaves those functions as they are)."""
    lines, marks = source.splitlines(), {}
    fenced = False
    for node in ast.parse(source).body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        if (node.lineno in keep) == fenced:
            marks[first], fenced = ("# pragma: no mutate end" if fenced else "# pragma: no mutate start"), not fenced
    out = [x for n, line in enumerate(lines) for x in ([marks[n]] if n in marks else []) + [line]]
    return "\n".join(out + (["# pragma: no mutate end"] if fenced else [])) + "\n"


def write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def stage(sections):
    """The staged copy: sources fenced to the chosen functions, the tests and what they read; files
    left untouched where nothing changed (mutmut then keeps its mutants and stats)."""
    (STAGE / "tests").mkdir(parents=True, exist_ok=True)
    for file, nodes in chosen_nodes(sections).items():
        write_if_changed(STAGE / file, fence((ROOT / file).read_text(), {n.lineno for n in nodes}))
    for name in ("paper_results.csv", "run_all.sh", "README.md", "pytest.ini", "setup.cfg"):
        text = (ROOT / name).read_text()
        # mutmut learns which tests reach which function in its own process: no xdist workers there
        write_if_changed(STAGE / name, text.replace(" -n 2", "") if name == "pytest.ini" else text)
    for test in (ROOT / "tests").glob("*.py"):
        if test.name != "mutate.py":
            write_if_changed(STAGE / "tests" / test.name, test.read_text())


def mutant_names(names):
    """Every mutant of the functions `names` (mutmut's patterns) covers, as mutmut will name them."""
    from fnmatch import fnmatch
    from mutmut.mutation.file_mutation import mutate_file_contents
    every = []
    for file in ("lagvae.py", "data.py"):
        every += [f"{file[:-3]}.{m}" for m in mutate_file_contents(file, (STAGE / file).read_text()).mutant_names]
    return [m for m in every if any(fnmatch(m, p) for p in names)]


def records():
    """mutmut's record of each mutated file: its .meta path and the JSON in it (a verdict per mutant)."""
    return [(meta, json.loads(meta.read_text())) for meta in (STAGE / "mutants").glob("*.meta")]


def score(names):
    """killed / tried among `names`, from mutmut's records, with a 95 % Wilson interval. A timeout counts as
    killed (the mutant broke a loop's exit), as mutmut counts it."""
    from mutmut.stats import status_by_exit_code
    codes = {}
    for _, record in records():
        codes.update(record["exit_code_by_key"])
    status = [status_by_exit_code[codes.get(n)] for n in names]
    counts = {s: status.count(s) for s in sorted(set(status))}
    tried = len(status) - counts.get("not checked", 0)
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    z, p = 1.96, killed / tried if tried else math.nan
    half = z * math.sqrt(p * (1 - p) / tried + z * z / (4 * tried * tried)) / (1 + z * z / tried) if tried else math.nan
    mid = (p + z * z / (2 * tried)) / (1 + z * z / tried) if tried else math.nan
    print(f"mutation score: {killed} of {tried} killed ({100 * p:.1f} %, 95 % interval {100 * (mid - half):.1f}-"
          f"{100 * (mid + half):.1f} %); {counts}")
    for n, s in zip(names, status):
        if s in ("survived", "no tests"):
            print(f"  {s}: {n}")


RETRIED = ("survived", "no tests", "not checked")


def forget_survivors(names):
    """Clear mutmut's verdict on those of `names` that survived or had no test, so that its next run
    tries them again against the tests as they are now (mutmut keeps verdicts while a function's
    source is unchanged, whatever the tests). Returns them, with any not checked yet (an interrupted
    retry goes on)."""
    from mutmut.stats import status_by_exit_code
    again = []
    for meta, record in records():
        codes = record["exit_code_by_key"]
        mine = [n for n in names if n in codes and status_by_exit_code[codes[n]] in RETRIED]
        for n in mine:
            codes[n] = None
        if mine:
            meta.write_text(json.dumps(record))
        again += mine
    return again


def main(argv):
    flags = {f: argv[argv.index(f) + 1] for f in ("--max-children", "--sample", "--seed") if f in argv[:-1]}
    argv = [a for a in argv if a not in flags and a not in flags.values()]
    chosen = tuple(a for a in argv if not a.startswith("--")) or SECTIONS + ("data",)
    unknown = set(chosen) - set(SECTIONS + ("data",))
    if unknown:
        print(f"mutate.py: unknown section {sorted(unknown)} (expected some of {SECTIONS + ('data',)})", file=sys.stderr)
        return 2
    names = patterns(chosen)
    if "--list" in argv:
        print("\n".join(names))
        return 0
    stage(chosen)
    every = mutant_names(names)
    if "--sample" in flags:
        every = sorted(random.Random(int(flags.get("--seed", 0))).sample(every, min(int(flags["--sample"]), len(every))))
        print(f"mutate.py: {len(every)} of the mutants, drawn with seed {flags.get('--seed', 0)}")
    if "--report" in argv:
        score(every)
        return 0
    children = ["--max-children", flags["--max-children"]] if "--max-children" in flags else []
    targets = every if "--sample" in flags else names
    if "--retry-survivors" in argv:
        targets = forget_survivors(every)
        print(f"mutate.py: trying the {len(targets)} survivors again")
    if targets:
        subprocess.run([sys.executable, "-m", "mutmut", "run", *children, *targets], cwd=STAGE)
    score(every)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
