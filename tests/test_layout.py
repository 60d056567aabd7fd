"""The package layout of README's "Code map": no import cycle, no upward import.

An AST walk over `diffsal_jax/` (imports inside functions included), so a
change that breaks the documented direction fails here, not in review.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "diffsal_jax"

# Which role (or single module) each role may import, besides itself. The
# top-level modules are the commands (`main`, `predict`, `evaluate`,
# `convert`) and may import anything. Data reads the model's hyper-parameters
# (clip length, sizes, audio patches), never the network.
ALLOWED = {
    "models": set(),
    "data": {"models.config"},
    "reporting": {"data"},
    "evaluation": {"data", "reporting"},
    "training": {"models", "data", "evaluation", "reporting"},
    "inference": {"models", "data", "evaluation", "training", "reporting"},
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """Modules of ours that `path` imports (`from pkg import mod` resolved)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      assert node.level == 0, f"{path}: use absolute imports"
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in modules else node.module)
  return {name for name in found if name.split(".")[0] in
          ("diffsal_jax", "data_prep", "configs", "tools", "tests")}


def import_graph() -> dict[str, set[str]]:
  files = sorted(PACKAGE.rglob("*.py"))
  modules = {_module_name(f) for f in files}
  return {_module_name(f): _imports(f, modules) for f in files}


# Top-level modules a role may import: only the console, flag set-up and
# compilation cache the commands share (the commands themselves sit above
# all roles).
SHARED = {"diffsal_jax.console", "diffsal_jax.cli_flags",
          "diffsal_jax.compilation_cache"}


def _role(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 2 or parts[1:] and parts[1] in ALLOWED else None


def test_no_upward_import():
  wrong = []
  for module, imported in import_graph().items():
    for target in imported:
      if target.split(".")[0] != "diffsal_jax":
        wrong.append(f"{module} -> {target} (outside the package)")
        continue
      role, target_role = _role(module), _role(target)
      if role is not None and target_role is None and target not in SHARED:
        wrong.append(f"{module} -> {target} (a command module)")
        continue
      if role is None or target_role is None or target_role == role:
        continue
      if (target_role not in ALLOWED[role] and
          target.split(".", 1)[1] not in ALLOWED[role]):
        wrong.append(f"{module} -> {target} ({role} may import only "
                     f"{sorted(ALLOWED[role]) or 'itself'})")
  assert not wrong, "imports against the Code map's direction:\n" + "\n".join(wrong)


def test_no_import_cycle():
  graph = {m: {t for t in ts if t in import_graph_cache()} for m, ts in
           import_graph_cache().items()}
  cycles, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


_GRAPH: dict[str, set[str]] = {}


def import_graph_cache() -> dict[str, set[str]]:
  if not _GRAPH:
    _GRAPH.update(import_graph())
  return _GRAPH


def test_the_walk_sees_the_layers():
  """Guards the test itself: the graph holds the edges we know exist."""
  graph = import_graph_cache()
  assert "diffsal_jax.models.api" in graph["diffsal_jax.training.model_setup"]
  assert "diffsal_jax.data.input_pipeline" in graph["diffsal_jax.training.train"]
  assert _role("diffsal_jax.main") is None
  assert _role("diffsal_jax.evaluation") == "evaluation"
