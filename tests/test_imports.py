"""The import graph of seqlab/: no cycle, and the cells, scan, layers and tasks never
import the models, the loop or the tools, directly or through another module.

Every ``import`` and ``from ... import`` in every module counts, at module level and
inside functions alike (a function-level import is still a dependency; it only hides
a cycle until the function runs). ``from seqlab.models import decode`` names the module
``seqlab.models.decode``; a name that is not a module (``from seqlab.tasks.base import
Spec``) names the module it comes from. A package's ``__init__`` is not counted as
imported by its own submodules (Python runs it first, whatever the submodule imports).
"""
import ast
import os

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'seqlab')
# The foundations: the cells, the one time loop, the layers and the data.
LOWER = ('seqlab.cells', 'seqlab.scan', 'seqlab.layers', 'seqlab.tasks')
# What is built on them: the models, the training loop and the command-line tools.
TOOLS = ('run', 'sweep', 'population', 'evaluate', 'sample', 'export', 'diagnose', 'report',
         'reproduce', 'bench', 'cli')
UPPER = ('seqlab.models', 'seqlab.train') + tuple(f'seqlab.{t}' for t in TOOLS)


def module_files(root=PACKAGE) -> dict[str, str]:
  """Dotted name -> path of every module of the package under ``root``."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, os.path.dirname(root))[:-3].split(os.sep)
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


def imported_modules(name: str, path: str, modules) -> set[str]:
  """The modules of ``modules`` that module ``name`` (file ``path``) imports, anywhere in it."""
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = set()
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      found.update(f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                   for a in node.names)
  return {m for m in found if m in modules and m != name and not name.startswith(m + '.')}


def import_graph(root=PACKAGE) -> dict[str, set[str]]:
  """Module -> the package's modules it imports."""
  modules = module_files(root)
  return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph) -> list[str] | None:
  """One cycle [a, b, ..., a] of ``graph`` (depth-first search), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def reachable(graph, start: str) -> set[str]:
  """Every module ``start`` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def upward_imports(graph) -> list[str]:
  """'a -> b' for every module ``b`` of ``UPPER`` that a foundation module ``a``
  (``LOWER``) imports, directly or through a module outside both (as tasks reached
  the models through the metrics)."""
  return sorted(f'{a} -> {b}' for a in graph if _within(a, LOWER)
                for b in reachable(graph, a) if _within(b, UPPER))


def test_seqlab_has_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, ' -> '.join(cycle)


def test_cells_scan_layers_and_tasks_do_not_import_models_the_loop_or_tools():
  assert upward_imports(import_graph()) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
  """The checks above on a made-up package: each rule fires on its own violation."""
  pkg = tmp_path / 'seqlab'
  for folder in (pkg, pkg / 'models', pkg / 'tasks'):
    folder.mkdir(exist_ok=True)
    (folder / '__init__.py').write_text('')
  (pkg / 'metrics.py').write_text('import numpy\n\ndef f():\n  from seqlab.models import decode\n')
  (pkg / 'models' / 'decode.py').write_text('from seqlab.metrics import f\n')
  (pkg / 'tasks' / 'g2p.py').write_text('from ..models.decode import g\nfrom . import base\n')
  (pkg / 'tasks' / 'base.py').write_text('from seqlab.tasks import g2p\n')
  (pkg / 'tasks' / 'copy.py').write_text('import seqlab.metrics\n')
  graph = import_graph(str(pkg))
  assert graph['seqlab.metrics'] == {'seqlab.models.decode'}  # inside a function
  assert graph['seqlab.tasks.g2p'] == {'seqlab.models.decode', 'seqlab.tasks.base'}
  assert find_cycle(graph) in (['seqlab.metrics', 'seqlab.models.decode', 'seqlab.metrics'],
                               ['seqlab.tasks.base', 'seqlab.tasks.g2p', 'seqlab.tasks.base'])
  assert upward_imports(graph) == ['seqlab.tasks.base -> seqlab.models.decode',
                                   'seqlab.tasks.copy -> seqlab.models.decode',  # via metrics
                                   'seqlab.tasks.g2p -> seqlab.models.decode']
  graph['seqlab.models.decode'] = set()
  graph['seqlab.tasks.base'] = set()
  assert find_cycle(graph) is None


@pytest.mark.parametrize('graph, cycle', [
    ({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}, ['a', 'b', 'c', 'a']),
    ({'a': {'a'}}, ['a', 'a']),
    ({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}, None),
])
def test_find_cycle_on_small_graphs(graph, cycle):
  assert find_cycle(graph) == cycle
