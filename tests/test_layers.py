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
import importlib, json, os, sys
layers, groups, third_party = json.loads(sys.argv[1])
for name in third_party:  # loaded once before the forks: each layer's child then imports only nlhf_jax modules
  try:
    importlib.import_module(name)
  except Exception:
    pass
assert not any(m.startswith('nlhf_jax') for m in sys.modules)
found = {}
for layer, names in groups.items():
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:  # a fresh interpreter as far as nlhf_jax is concerned
    status = 1
    try:
      os.close(read)
      for name in names:
        importlib.import_module(name)
      above = sorted(m for m in sys.modules if m.startswith('nlhf_jax.') and layers[m.split('.')[1]] > int(layer))
      os.write(write, json.dumps(above).encode())
      status = 0
    finally:
      os._exit(status)
  os.close(write)
  data = b''
  while chunk := os.read(read, 1 << 16):
    data += chunk
  os.close(read)
  found[layer] = json.loads(data) if os.waitpid(pid, 0)[1] == 0 else f'importing {names} failed'
print(json.dumps(found))
'''


def _third_party() -> list[str]:
  """The packages outside the standard library that nlhf_jax modules import at their top."""
  out = set()
  for _, _, tree in _modules():
    for node in tree.body:
      if isinstance(node, ast.Import):
        out.update(a.name.split('.')[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        out.add(node.module.split('.')[0])
  return sorted(out - set(sys.stdlib_module_names) - {'nlhf_jax', '__future__'})


def test_a_layer_imported_alone_loads_nothing_above_it():
  """Each layer's modules imported in a process that has loaded no nlhf_jax module (a fork per layer of one
  interpreter that imported the third-party packages first): no nlhf_jax module of a higher layer loads."""
  groups = {}
  for m, _, _ in _modules():
    if m != 'nlhf_jax' and LAYERS[_package(m)] < max(LAYERS.values()):
      groups.setdefault(str(LAYERS[_package(m)]), []).append(m)
  out = subprocess.run([sys.executable, '-c', _LOADS_NOTHING_ABOVE, json.dumps([LAYERS, groups, _third_party()])],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  found = json.loads(out.stdout.strip().splitlines()[-1])
  assert sorted(found, key=int) == sorted(groups, key=int)
  assert all(v == [] for v in found.values()), {k: v for k, v in found.items() if v}


def test_the_check_sees_imports_inside_functions():
  tree = ast.parse('def f():\n  from nlhf_jax.online import judges\n  import nlhf_jax.trainer.loop\n')
  assert _imports(tree) == {'nlhf_jax.online', 'nlhf_jax.trainer.loop'}
  assert _function_imports(tree) == {'nlhf_jax'}
