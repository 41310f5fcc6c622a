"""Mutation testing of the core with mutmut (not a test module; not in CI: hours, not minutes).

    .venv/bin/pip install -r requirements-dev.txt
    .venv/bin/python tests/mutate.py            # mutate, run the fast lane per mutant, print the survivors
    .venv/bin/python tests/mutate.py --list     # only the mutmut name patterns it would run
    .venv/bin/python tests/mutate.py Objectives data    # some of: Objectives, Training modes, Evaluation, data

It mutates the functions of lagvae.py's sections on objectives and estimators, training modes and
evaluation and data.py's split logic, one small change at a time (mutmut's operators: a number, an
operator, a comparison, a string, an argument...), and runs for each mutant the tests that reach the
mutated function, with `-m "not slow"`. A mutant no test kills is a line whose bug would go unnoticed.
mutmut writes its copy and results under mutants/ (git-ignored); `mutmut show NAME` prints a survivor's
diff. mutmut leaves decorated functions alone (e.g. `idle_side_frozen`, `posterior_mean_grid`).
"""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def patterns(sections=SECTIONS + ("data",)):
    """mutmut's names for the mutants of the chosen functions: module.x_function__mutmut_N and
    module.xǁClassǁmethod__mutmut_N. sections: lagvae.py's by title, and "data" for data.py's splits."""
    source = (ROOT / "lagvae.py").read_text()
    section = section_of_lines(source)
    out = []
    for node in ast.parse(source).body:
        if section[node.lineno] not in sections:
            continue
        if isinstance(node, ast.FunctionDef):
            out.append(f"lagvae.x_{node.name}__mutmut_*")
        elif isinstance(node, ast.ClassDef):
            out += [f"lagvae.xǁ{node.name}ǁ{f.name}__mutmut_*" for f in node.body if isinstance(f, ast.FunctionDef)]
    return out + [f"data.x_{name}__mutmut_*" for name in DATA_SPLITS] * ("data" in sections)


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
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run(mutmut + ["run", *names], cwd=ROOT)
    return subprocess.run(mutmut + ["results"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
