"""Mutation testing of the core with mutmut (not a test module; not in CI: hours, not minutes).

    .venv/bin/pip install -r requirements-dev.txt
    .venv/bin/python tests/mutate.py            # mutate, run the fast lane per mutant, print the score and survivors
    .venv/bin/python tests/mutate.py --list     # only the mutmut name patterns it would run
    .venv/bin/python tests/mutate.py Objectives data    # some of: Objectives, Training modes, Evaluation, data

It mutates the functions of lagvae.py's sections on objectives and estimators, training modes and
evaluation and data.py's split logic, one small change at a time (mutmut's operators: a number, an
operator, a comparison, a string, an argument...), and runs for each mutant the tests that reach the
mutated function, with `-m "not slow"`. A mutant no test kills is a line whose bug would go unnoticed.

mutmut mutates whole files, and a module where every function carries all its mutants is ~16 MB of
Python that every test process must import. So it runs on a staged copy under .mutate/ (git-ignored)
in which everything outside the chosen sections is fenced off by `# pragma: no mutate start/end`:
only the chosen functions are rewritten, and the code under test stays free of tool comments.
`cd .mutate && ../.venv/bin/mutmut show NAME` prints a survivor's diff. mutmut leaves decorated
functions alone (e.g. `idle_side_frozen`, `posterior_mean_grid`).
"""
import ast
import re
import shutil
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


def stage(sections):
    """The staged copy: sources fenced to the chosen functions, the tests and what they read."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir()
    for file, nodes in chosen_nodes(sections).items():
        (STAGE / file).write_text(fence((ROOT / file).read_text(), {n.lineno for n in nodes}))
    for name in ("paper_results.csv", "pytest.ini", "setup.cfg"):
        shutil.copy(ROOT / name, STAGE / name)
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=shutil.ignore_patterns("__pycache__", "mutate.py"))


def main(argv):
    chosen = tuple(a for a in argv if not a.startswith("--"))
    unknown = set(chosen) - set(SECTIONS + ("data",))
    if unknown:
        print(f"mutate.py: unknown section {sorted(unknown)} (expected some of {SECTIONS + ('data',)})", file=sys.stderr)
        return 2
    names = patterns(chosen or SECTIONS + ("data",))
    if "--list" in argv:
        print("\n".join(names))
        return 0
    stage(chosen or SECTIONS + ("data",))
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run(mutmut + ["run", *names], cwd=STAGE)
    return subprocess.run(mutmut + ["results"], cwd=STAGE).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
