"""The package's floors (docs/architecture.md): a module imports only its own package and lower floors; config/
imports nothing else of samoe_jax; project imports sit at the top of modules (the few exceptions are listed below,
each with its reason). Read from the source with ast: nothing is imported, so this runs in a second."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'samoe_jax'

# Lowest first. A name is a subpackage or a module at the package root (docs/architecture.md, "The floors").
FLOORS: dict[str, int] = {
    'config': 0, 'console': 0, 'deps': 0,
    'cli': 1,
    'layers': 2,
    'models': 3,
    'sharding': 4,
    'data': 5,
    'checkpointing': 6,
    'evaluation': 7,
    'training': 8,
    'analysis': 9,
    'compress': 10, 'experiments': 10,
    'bench_configs': 11,
    'train': 12, 'evaluate': 12, 'generate': 12, 'finetune': 12, 'describe': 12, 'report': 12, 'bench': 12,
    'mesh_plan': 12, '__init__': 12,
}

# Function-local project imports that stay, keyed by (importing module, imported module), each with its reason.
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ('samoe_jax.data.pipeline', 'samoe_jax.data.sequences'):
        'imports TensorFlow and seqio at load; only data.task=tfds_lm needs it, and the one-GPU image has neither',
    ('samoe_jax.data.sources', 'samoe_jax.data.tfds_dataset'):
        'imports TensorFlow at load; only data.task=tfds_lm needs it, and the one-GPU image has none',
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _room(module: str) -> str:
  """The floor's key of a module: its subpackage, or its own name at the package root."""
  parts = module.split('.')
  if len(parts) == 1:
    return '__init__'
  return parts[1]


def _project_imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(imported samoe_jax module or package, line, inside a function) for every import in the file."""
  module = _module_name(path)
  tree = ast.parse(path.read_text(), filename=str(path))
  local_nodes = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      local_nodes.update(id(n) for n in ast.walk(node) if n is not node)
  found = []
  for node in ast.walk(tree):
    targets: list[str] = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
        package = package[:len(package) - node.level + 1]
        base = '.'.join(package + ([base] if base else []))
      targets = [f'{base}.{a.name}' for a in node.names]
    for target in targets:
      if target == 'samoe_jax' or target.startswith('samoe_jax.'):
        found.append((target, node.lineno, id(node) in local_nodes))
  return found


SOURCES = sorted(PACKAGE.rglob('*.py'))


def test_every_room_of_the_package_has_a_floor():
  rooms = {_room(_module_name(p)) for p in SOURCES}
  missing, stale = sorted(rooms - set(FLOORS)), sorted(set(FLOORS) - rooms)
  assert not missing, f'put these in FLOORS here and in docs/architecture.md: {missing}'
  assert not stale, f'these are in FLOORS but not in the package: {stale}'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_stay_on_their_floor_or_below(path):
  module = _module_name(path)
  room = _room(module)
  climbs = []
  for target, line, _ in _project_imports(path):
    target_room = _room(target)
    if target_room == '__init__' or target_room == room:
      continue
    if target_room not in FLOORS:   # `from samoe_jax import x`: x names the room
      continue
    if FLOORS[target_room] >= FLOORS[room]:
      climbs.append(f'{path.relative_to(ROOT)}:{line} imports {target} (floor {FLOORS[target_room]}) from floor '
                    f'{FLOORS[room]}')
  if room == 'config':
    climbs += [f'{path.relative_to(ROOT)}:{line} imports {target}: config/ imports only config/'
               for target, line, _ in _project_imports(path) if _room(target) != 'config']
  assert not climbs, '\n'.join(climbs)


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_project_imports_sit_at_the_top(path):
  module = _module_name(path)
  local = [f'{path.relative_to(ROOT)}:{line} imports {target} inside a function'
           for target, line, inside in _project_imports(path)
           if inside and (module, target) not in LOCAL_IMPORTS_ALLOWED]
  assert not local, '\n'.join(local)


def test_the_allow_list_names_imports_that_exist():
  present = {(_module_name(p), t) for p in SOURCES for t, _, inside in _project_imports(p) if inside}
  stale = sorted(set(LOCAL_IMPORTS_ALLOWED) - present)
  assert not stale, f'remove these from LOCAL_IMPORTS_ALLOWED: {stale}'
  assert all(reason.strip() for reason in LOCAL_IMPORTS_ALLOWED.values())


def _existing_module(target: str, modules: set[str]) -> str | None:
  """The module a dotted import names (`from pkg import module` names a module; `from module import name` not)."""
  while target and target not in modules:
    target = target.rpartition('.')[0]
  return target or None


def test_no_import_circle_between_modules():
  modules = {_module_name(p): p for p in SOURCES}
  graph = {m: sorted({t for target, _, _ in _project_imports(p)
                      if (t := _existing_module(target, set(modules))) and t != m and not m.startswith(t + '.')})
           for m, p in modules.items()}
  # Tarjan's strongly connected components; any component of two or more modules is a circle.
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  circles: list[list[str]] = []

  def visit(m: str) -> None:
    index[m] = low[m] = len(index)
    stack.append(m)
    on_stack.add(m)
    for t in graph[m]:
      if t not in index:
        visit(t)
        low[m] = min(low[m], low[t])
      elif t in on_stack:
        low[m] = min(low[m], index[t])
    if low[m] == index[m]:
      component = []
      while True:
        t = stack.pop()
        on_stack.discard(t)
        component.append(t)
        if t == m:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for m in graph:
    if m not in index:
      visit(m)
  assert not circles, '\n'.join(' <-> '.join(c) for c in circles)
