"""The package's import structure: the config schema loads without jax, and no module imports itself back."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "usjepa_jax"


def test_config_imports_without_jax():
    """``import usjepa_jax.config`` (and building and validating a config) loads no jax, flax or optax; nor does
    the training command's module before it has checked its flags and config (``main.py``)."""
    code = ("import sys; from usjepa_jax import config as c; c.validate(c.default_config()); import usjepa_jax.main; "
            "print(sorted(m for m in ('jax', 'flax', 'optax', 'grain') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere (inside functions too)."""
    found = set()
    this = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(this.split(".")[:-node.level] + [node.module])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found - {this}


def test_no_import_circle():
    """Every import of the package's modules (module level or inside a function) as a graph: no cycle. A package's
    face (its ``__init__``) is not counted as imported by its own submodules (Python runs it first anyway)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in imports(p, set(files)) if not m.startswith(t + ".")} for m, p in files.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
