"""The module as a whole: lagvae.py reads top-down, each section using only what is defined above it."""
import ast
import re
from pathlib import Path

SOURCE = (Path(__file__).resolve().parents[1] / "lagvae.py").read_text()


def sections(lines):
    """line number -> the number of the `# N. Title` section it lies in."""
    out, current = {}, 0
    for n, line in enumerate(lines, 1):
        m = re.match(r"# (\d+)\. ", line)
        current = int(m.group(1)) if m else current
        out[n] = current
    return out


def bound_names(node):
    """Every name a function or class binds itself: parameters, assignments, loop and comprehension
    targets, imports, nested definitions."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.arg):
            names.add(sub.arg)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)) and sub is not node:
            names.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in sub.names)
    return names


def forward_references(source):
    """(section, name, section of the name's definition) wherever a top-level function or class uses a
    module-level name that a later section defines."""
    tree, section = ast.parse(source), sections(source.splitlines())
    defined = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.setdefault(node.name, section[node.lineno])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defined.setdefault(n.id, section[node.lineno])
    found = set()
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        local, here = bound_names(node), section[node.lineno]
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id not in local
                    and defined.get(sub.id, 0) > here):
                found.add((here, node.name, sub.id, defined[sub.id]))
    return sorted(found)


def test_no_section_uses_a_later_one():
    assert forward_references(SOURCE) == []


def test_a_forward_reference_is_found():
    source = "# 1. A\ndef f(x):\n    return g(x) + x\n\n# 2. B\ndef g(y):\n    return y\n"
    assert forward_references(source) == [(1, "f", "g", 2)]
    # a local of the same name is not one
    assert forward_references(source.replace("return g(x)", "g = abs\n    return g(x)")) == []
