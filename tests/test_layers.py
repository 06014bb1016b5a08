"""The package layers of docs/architecture.md, checked on the source: no module imports a package above its own,
including imports inside functions. Command modules (the CLIs and benches: those that import nlhf_jax.cli.common or
call absl's app.run, and every __main__) are shells above every layer; no library module imports one."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1] / 'nlhf_jax'

# Lowest first. A package may import its own modules and those of packages of a lower rank only.
LAYERS = {
    'config': 0, 'logs': 0, 'outputs': 0,
    'perf': 1, 'distributed': 1, 'tabular': 1, 'accelerators': 1,
    'models': 2, 'data': 2,
    'objectives': 3, 'sampling': 3,
    'training': 4,
    'online': 5,
    'trainer': 6,
    'benchmark': 7, 'interop': 7,
    'evaluation': 8,
    'pipeline': 9,
}
SHELLS_ONLY = {'commands', 'train', 'bench', 'accelerator_bench', 'accelerator_compile'}  # top-level command modules


def _modules():
  for path in sorted(ROOT.rglob('*.py')):
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    yield name, ast.parse(path.read_text(), str(path))


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


def _is_shell(module: str, tree, deps: set[str]) -> bool:
  calls_app_run = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == 'run'
                      and isinstance(n.func.value, ast.Name) and n.func.value.id == 'app' for n in ast.walk(tree))
  return ('nlhf_jax.cli.common' in deps or calls_app_run or module.endswith('.__main__')
          or module.split('.')[-1] in SHELLS_ONLY and module.count('.') == 1)


def _package(module: str) -> str:
  return module.split('.')[1]


def test_every_package_has_a_layer():
  packages = {_package(m) for m, _ in _modules() if m != 'nlhf_jax'}
  assert packages - SHELLS_ONLY <= set(LAYERS), sorted(packages - SHELLS_ONLY - set(LAYERS))


def test_no_import_from_a_lower_layer_to_a_higher_one():
  modules = dict(_modules())
  imports = {m: _imports(tree) for m, tree in modules.items()}
  shells = {m for m, tree in modules.items() if _is_shell(m, tree, imports[m])}
  wrong = []
  for module, deps in sorted(imports.items()):
    if module == 'nlhf_jax':
      continue
    for dep in sorted(deps):
      target = next((m for m in (dep, dep.rsplit('.', 1)[0]) if m in modules), dep)
      if target in shells and module not in shells:
        wrong.append(f'{module} imports the command module {target}')
      if module in shells:
        continue
      own, theirs = _package(module), _package(target)
      if own != theirs and LAYERS[theirs] >= LAYERS[own]:
        wrong.append(f'{module} (layer {LAYERS[own]}, {own}) imports {dep} (layer {LAYERS[theirs]}, {theirs})')
  assert not wrong, '\n'.join(wrong)


def test_the_shells_are_the_commands():
  modules = dict(_modules())
  shells = {m for m, tree in modules.items() if _is_shell(m, tree, _imports(tree))}
  for cli in ('nlhf_jax.cli.train', 'nlhf_jax.cli.bench', 'nlhf_jax.cli.online_bench', 'nlhf_jax.cli.pipeline',
              'nlhf_jax.cli.eval', 'nlhf_jax.cli.data', 'nlhf_jax.cli.plot', 'nlhf_jax.cli.hf_import'):
    assert cli in shells, cli
  assert not shells & {'nlhf_jax.trainer.loop', 'nlhf_jax.online.step', 'nlhf_jax.pipeline.runner'}


def test_the_check_sees_imports_inside_functions():
  tree = ast.parse('def f():\n  from nlhf_jax.online import judges\n  import nlhf_jax.trainer.loop\n')
  assert _imports(tree) == {'nlhf_jax.online', 'nlhf_jax.trainer.loop'}
