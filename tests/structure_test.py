"""The package's shape: small modules, short functions, layered imports.

The limits: no module of `mexd/` over 420 lines,
no function whose code (its docstring excluded) runs over 60 lines; the
layers `losses`, `models`, `data` import nothing of mexd above them (only
the modules listed in LAYERS), and no module
of mexd or benchmarks/ imports an entry point (`mexd.train`,
`mexd.evaluate`).
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "mexd"
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60
ENTRY_POINTS = {"mexd.train", "mexd.evaluate", "mexd.export", "mexd.serve"}
# What each layer may import from mexd (besides itself).
LAYERS = {
    "losses": {"mexd.errors"},
    "data": {"mexd.errors", "mexd.paths"},
    "models": {"mexd.errors", "mexd.cpu"},
}


def _sources():
  return sorted(p for p in PKG.rglob("*.py"))


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES):
  """[(name, code lines)] of the functions whose code, without the
  docstring, spans more than `limit` lines."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body[1:] if ast.get_docstring(node) else node.body
      if body:
        n = body[-1].end_lineno - body[0].lineno + 1
        if n > limit:
          out.append((node.name, n))
  return out


def mexd_imports(source: str):
  """The mexd modules a source imports (`from mexd import x` -> mexd.x)."""
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("mexd"))
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.module == "mexd" or node.module.startswith("mexd.")):
      if node.module == "mexd":
        out.update(f"mexd.{a.name}" for a in node.names)
      else:
        out.add(node.module)
  return out


def test_the_measures_can_fail():
  body = "\n".join(f"  x{i} = {i}" for i in range(61))
  src = f'def f():\n  """Doc.\n\n  More.\n  """\n{body}\n\ndef g():\n  pass\n'
  assert long_functions(src) == [("f", 61)]
  assert long_functions(src, limit=61) == []
  assert mexd_imports("from mexd import train\nimport mexd.models.base\n"
                      "from mexd.losses import common\nimport numpy\n") == {
                          "mexd.train", "mexd.models.base", "mexd.losses"}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(
    p.relative_to(PKG)))
def test_module_is_small(path):
  src = path.read_text()
  n = src.count("\n")
  assert n <= MAX_MODULE_LINES, f"{path.name}: {n} lines; split it"
  assert long_functions(src) == [], (
      f"{path.name}: functions over {MAX_FUNCTION_LINES} lines of code")


def test_no_module_imports_an_entry_point():
  # The benchmarks too: they run the library (mexd.trainer, mexd.predict).
  for path in _sources() + sorted((PKG.parent / "benchmarks").glob("*.py")):
    root = PKG if PKG in path.parents else PKG.parent / "benchmarks"
    mod = f"{root.name}." + ".".join(
        path.relative_to(root).with_suffix("").parts)
    bad = (mexd_imports(path.read_text()) & ENTRY_POINTS) - {mod}
    assert not bad, f"{mod} imports the entry point(s) {sorted(bad)}"


def test_the_deploy_runtime_imports_no_model_code():
  # mexd.deploy runs an export with jax and NumPy: of mexd only these two
  # plain-Python modules (mexd.cpu: the package's switch, not its layers).
  for path in (PKG / "deploy").rglob("*.py"):
    for m in mexd_imports(path.read_text()):
      assert m.startswith("mexd.deploy") or m in (
          "mexd.errors", "mexd.cpu"), (
              f"{path.relative_to(PKG)} imports {m}")


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_nothing_above_them(layer):
  own = f"mexd.{layer}"
  for path in (PKG / layer).rglob("*.py"):
    for m in mexd_imports(path.read_text()):
      if m == own or m.startswith(own + "."):
        continue
      assert any(m == a or m.startswith(a + ".") for a in LAYERS[layer]), (
          f"{path.relative_to(PKG)} imports {m}")
