"""The import graph of specjax/ follows the declared layer order (docs/DESIGN.md): a module imports
only from its own layer or the layers below it, and no modules import one another in a cycle. Every
import counts, function-level ones included, `if TYPE_CHECKING:` ones not (walked with ast, nothing is imported)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "specjax"

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS = [
    ["specjax.numerics", "specjax.protocol", "specjax.interrupt", "specjax.cache", "specjax.checks",
     "specjax.process_cache"],
    ["specjax.models"],
    ["specjax.io", "specjax.engine"],
    ["specjax.drafters"],
    ["specjax.parallel", "specjax.budget"],
    ["specjax.program"],
    ["specjax.train"],
    ["specjax.api", "specjax.batch", "specjax.bench"],
    ["specjax.cli", "specjax.cli_args", "specjax.demo", "specjax.testing", "specjax"],
]

# Known violations, (importer, imported) by module. Do not add to it: fix the import instead.
ALLOWED = set()


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module(p): p for p in ROOT.rglob("*.py")}


def _imports(mod: str, path: pathlib.Path, known: set[str]) -> set[str]:
  package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
  out = set()
  tree = ast.parse(path.read_text(), str(path))
  typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                 for stmt in block.body for n in ast.walk(stmt)}    # `if TYPE_CHECKING:` imports run never
  for node in ast.walk(tree):
    if id(node) in typing_only:
      continue
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
      else:
        src = node.module
      for a in node.names:               # `from specjax import numerics` imports the module specjax.numerics
        out.add(f"{src}.{a.name}" if f"{src}.{a.name}" in known else src)
  return {m for m in out if m == "specjax" or m.startswith("specjax.")}


def _layer(mod: str) -> int:
  best = max((p for layer in LAYERS for p in layer if mod == p or mod.startswith(p + ".")), key=len)
  return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _graph():
  mods = _modules()
  return {m: _imports(m, p, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_has_a_layer():
  for m in _modules():
    _layer(m)


def test_no_upward_imports():
  bad = sorted((a, b) for a, deps in _graph().items() for b in deps
               if _layer(b) > _layer(a) and (a, b) not in ALLOWED)
  assert not bad, "imports from a higher layer (see LAYERS):\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_allowlist_is_current():
  g = _graph()
  stale = sorted(e for e in ALLOWED if e[1] not in g.get(e[0], ()))
  assert not stale, f"fixed violations still allowed, remove them from ALLOWED: {stale}"


def test_no_import_cycles():
  g = {a: {b for b in deps if b in _modules() and (a, b) not in ALLOWED} for a, deps in _graph().items()}
  index, low, stack, on, cycles = {}, {}, [], set(), []

  def visit(v):                           # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        cycles.append(sorted(comp))

  for v in g:
    if v not in index:
      visit(v)
  assert not cycles, f"modules importing one another: {cycles}"
