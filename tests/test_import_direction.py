"""The import direction of DESIGN.md: engine imports nothing from the other packages and never torch;
migration never imports suites or reports; reports reads result files and imports none of them.

Every .py file is parsed (ast), so imports inside functions and importlib/__import__ calls with a
literal name count too; a subprocess then imports every engine module and checks sys.modules.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_LIKE = {"torch", "torchvision", "torchaudio", "transformers", "diffusers", "ultralytics", "safetensors.torch"}
RULES = {
    "engine": TORCH_LIKE | {"migration", "suites", "reports", "taper"},
    "migration": {"suites", "reports", "taper"},
    "impls": {"migration", "suites", "reports", "taper"},
    "reports": TORCH_LIKE | {"engine", "migration", "suites", "impls", "taper"},  # result files only
}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value.partition(":")[0]))
    return out


def forbidden(name: str, banned: set) -> str | None:
    for b in banned:
        if name == b or name.startswith(b + "."):
            return b
    return None


def py_files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", list(RULES))
def test_import_direction(package):
    files = py_files(package)
    assert files, f"no .py files under {package}/"
    bad = []
    for f in files:
        for line, name in imported_names(f):
            b = forbidden(name, RULES[package])
            if b:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, f"{package} must not import {sorted(RULES[package])}:\n" + "\n".join(bad)


def test_checker_catches_violations(tmp_path, monkeypatch):
    """The parser sees plain, from-, relative, nested and importlib imports."""
    pkg = tmp_path / "engine" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("import os\nfrom .. import tensor\nfrom migration.verify import v\ndef f():\n    import torch.nn\n"
                 "import importlib\nimportlib.import_module('suites.common')\nfrom reports import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = [n for _, n in imported_names(f)]
    hits = {forbidden(n, RULES["engine"]) for n in names} - {None}
    assert hits == {"torch", "migration", "suites", "reports"}, names
    assert "engine.tensor" in names  # relative imports resolve inside the package


def test_importing_every_engine_module_loads_no_torch():
    code = """
import importlib, json, pkgutil, sys
import engine
skipped = []
for m in pkgutil.walk_packages(engine.__path__, "engine."):
    try:
        importlib.import_module(m.name)
    except ImportError as e:  # cupy-only modules on a machine without cupy
        if "cupy" not in str(e):
            raise
        skipped.append(m.name)
bad = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "migration", "suites", "reports", "taper",
                                                           "transformers", "diffusers"))
print(json.dumps({"bad": bad, "skipped": skipped}))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["bad"] == [], f"importing engine loaded {res['bad']}"
