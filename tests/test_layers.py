"""The package layers of docs/architecture.md, checked on the source and on what an import loads.

- No module imports a package of a higher layer, not even inside a function. `cli` (every command and bench entry
  point) is the top layer: it may import anything, and nothing imports it.
- Each layer's modules, imported in a fresh interpreter, load no nlhf_jax module of a higher layer.
- Library code (everything but nlhf_jax/cli/) imports inside a function only what docs/architecture.md's list of
  such imports names, each with its reason; every row of that list is still needed.
The layer table and the list are read from docs/architecture.md, so the document and this test cannot drift.
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]
ROOT = REPO / 'nlhf_jax'
DOC = REPO / 'docs' / 'architecture.md'
LAYER_TABLE = 'The layers, lowest first:'
FUNCTION_IMPORTS = 'The imports inside functions of library code, each with its reason:'


def _table(heading: str) -> list[list[str]]:
  """The body rows of the Markdown table after the line that ends with `heading` in docs/architecture.md."""
  lines = DOC.read_text().splitlines()
  start = next(i for i, line in enumerate(lines) if line.endswith(heading))
  rows = []
  for line in lines[start + 1:]:
    if line.startswith('|'):
      rows.append([cell.strip().strip('`') for cell in line.strip('|').split('|')])
    elif rows:
      break
  return [r for r in rows[1:] if not set(''.join(r)) <= set('-: ')]  # the header and the rule dropped


def _layers() -> dict[str, int]:
  """{package: layer} of the layer table; lowest first. A package may import its own modules and those of
  packages of a lower layer only."""
  out = {}
  for layer, packages in _table(LAYER_TABLE):
    out.update({p.strip(): int(layer) for p in packages.split(',')})
  return out


def _allowed() -> set[tuple[str, str]]:
  """(module path, imported top-level package) of the imports inside functions that library code may make."""
  return {(module, name) for module, name, _ in _table(FUNCTION_IMPORTS)}


LAYERS = _layers()


def _modules():
  for path in sorted(ROOT.rglob('*.py')):
    parts = path.relative_to(REPO).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    yield name, path, ast.parse(path.read_text(), str(path))


def _imports(tree) -> set[str]:
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module == 'nlhf_jax':
        out.update(f'nlhf_jax.{a.name}' for a in node.names)
      else:
        out.add(node.module)
  return {m for m in out if m.startswith('nlhf_jax.')}


def _function_imports(tree) -> set[str]:
  """The top-level package of every import inside a function."""
  out = set()
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for node in ast.walk(fn):
        if isinstance(node, ast.Import):
          out.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
          out.add(node.module.split('.')[0])
  return out


def _package(module: str) -> str:
  return module.split('.')[1]


def test_the_table_has_a_top_layer_of_commands():
  assert LAYERS['cli'] == max(LAYERS.values()) and list(LAYERS.values()).count(LAYERS['cli']) == 1, LAYERS


def test_every_package_has_a_layer():
  packages = {_package(m) for m, _, _ in _modules() if m != 'nlhf_jax'}
  assert packages == set(LAYERS), (sorted(packages - set(LAYERS)), sorted(set(LAYERS) - packages))


def test_no_import_from_a_lower_layer_to_a_higher_one():
  modules = {m: tree for m, _, tree in _modules()}
  wrong = []
  for module, tree in sorted(modules.items()):
    if module == 'nlhf_jax':
      continue
    for dep in sorted(_imports(tree)):
      own, theirs = _package(module), _package(dep)
      if own != theirs and LAYERS[theirs] >= LAYERS[own]:
        wrong.append(f'{module} (layer {LAYERS[own]}, {own}) imports {dep} (layer {LAYERS[theirs]}, {theirs})')
  assert not wrong, '\n'.join(wrong)


def test_library_code_imports_inside_functions_only_what_the_architecture_lists():
  found = set()
  for module, path, tree in _modules():
    if module.startswith('nlhf_jax.cli.') or module == 'nlhf_jax.cli':
      continue
    found |= {(str(path.relative_to(REPO)), name) for name in _function_imports(tree)}
  allowed = _allowed()
  assert not found - allowed, f'imports inside functions not listed in docs/architecture.md: {sorted(found - allowed)}'
  assert not allowed - found, f'listed in docs/architecture.md, no longer made: {sorted(allowed - found)}'


_LOADS_NOTHING_ABOVE = '''
import importlib, json, sys
for name in sys.argv[2:]:
  importlib.import_module(name)
layers = json.loads(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.startswith('nlhf_jax.') and layers[m.split('.')[1]] > {layer})))
'''


@pytest.mark.parametrize('layer', sorted(set(LAYERS.values()) - {max(LAYERS.values())}))
def test_a_layer_imported_alone_loads_nothing_above_it(layer):
  """Every module of the layer's packages in one fresh interpreter: no nlhf_jax module of a higher layer loads."""
  names = [m for m, _, _ in _modules() if m != 'nlhf_jax' and LAYERS[_package(m)] == layer]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  code = _LOADS_NOTHING_ABOVE.replace('{layer}', str(layer))
  out = subprocess.run([sys.executable, '-c', code, json.dumps(LAYERS), *names], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f'layer {layer} ({", ".join(names)}) loads these'


def test_the_check_sees_imports_inside_functions():
  tree = ast.parse('def f():\n  from nlhf_jax.online import judges\n  import nlhf_jax.trainer.loop\n')
  assert _imports(tree) == {'nlhf_jax.online', 'nlhf_jax.trainer.loop'}
  assert _function_imports(tree) == {'nlhf_jax'}
