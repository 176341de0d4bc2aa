"""Data flows one way (DESIGN.md): no module imports from a later stage.

The stages, earliest first: shared foundations; games (data, exact
reference, metrics); environments; policies; Hugging Face I/O; update
rules; algorithms; the trainer, checkpoints and evaluation functions; the
run kit (``nash_jax.experiment``, whose own modules run task -> checks ->
sweep -> results -> run); the kinds of run (``nash_jax.tasks``); analysis;
the stability study; figures. Every
``nash_jax`` import in the package, including imports inside functions,
is checked; and no module of the package or of ``experiments/`` imports a
private name (``_x``) from another.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / 'nash_jax'
STAGES = [
    ('nash_jax.errors', 'nash_jax.settings', 'nash_jax.distributions',
     'nash_jax.sharding', 'nash_jax.precision', 'nash_jax.io'),
    ('nash_jax.games', 'nash_jax.reference', 'nash_jax.bradley_terry',
     'nash_jax.metrics'),
    ('nash_jax.environments',),
    ('nash_jax.policies',),
    ('nash_jax.hf',),
    ('nash_jax.rules', 'nash_jax.oracles'),
    ('nash_jax.algorithms',),
    ('nash_jax.train', 'nash_jax.checkpoint', 'nash_jax.evaluation',
     'nash_jax.seed_blocks', 'nash_jax.sft', 'nash_jax.crossplay'),
    # The run kit, task-agnostic: task -> checks -> sweep -> results -> run.
    ('nash_jax.experiment.task',),
    ('nash_jax.experiment.checks',),
    ('nash_jax.experiment.sweep',),
    ('nash_jax.experiment.results',),
    ('nash_jax.experiment.run', 'nash_jax.experiment'),
    # The kinds of run, each a Task the kit runs.
    ('nash_jax.tasks.language_model',),
    ('nash_jax.tasks.oracles',),
    ('nash_jax.tasks.tabular', 'nash_jax.tasks.token_game',
     'nash_jax.tasks.post_train', 'nash_jax.tasks'),
    ('nash_jax.analysis',),
    ('nash_jax.stability',),
    ('nash_jax.figures',),
]


def stage(module: str) -> int:
  """The stage of a module: its longest matching prefix in STAGES."""
  best, found = -1, None
  for i, prefixes in enumerate(STAGES):
    for p in prefixes:
      if (module == p or module.startswith(p + '.')) and len(p) > best:
        best, found = len(p), i
  if found is None:
    raise AssertionError(f'{module} is in no stage')
  return found


def modules():
  for path in sorted(ROOT.rglob('*.py')):
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    yield '.'.join(parts), path


def _is_module(name: str) -> bool:
  """Whether ``name`` (``nash_jax.x.y``) is a module or package of the
  package, not a name defined in one."""
  path = ROOT.parent.joinpath(*name.split('.'))
  return path.with_suffix('.py').exists() or (path / '__init__.py').exists()


def imports(path: Path, module: str):
  """Absolute names of the nash_jax modules a file imports."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      # `from nash_jax import experiment` imports the module experiment, and
      # `from nash_jax.experiment import checks` the module checks.
      names = [f'{base}.{a.name}' if _is_module(f'{base}.{a.name}') else base
               for a in node.names]
    else:
      continue
    yield from (n for n in names if n.startswith('nash_jax.'))


@pytest.mark.parametrize('module,path', list(modules()),
                         ids=[m for m, _ in modules()])
def test_no_import_from_a_later_stage(module, path):
  if module == 'nash_jax':
    return
  mine = stage(module)
  later = [name for name in imports(path, module) if stage(name) > mine]
  assert not later, f'{module} (stage {mine}) imports {later}'


def test_stage_of_known_modules():
  assert stage('nash_jax.policies.sequence') > stage('nash_jax.environments')
  assert stage('nash_jax.experiment.run') > stage('nash_jax.experiment.sweep')
  assert stage('nash_jax.tasks.tabular') > stage('nash_jax.experiment')
  with pytest.raises(AssertionError):
    stage('nash_jax.unknown')


def test_a_later_import_is_caught(tmp_path):
  path = tmp_path / 'fake.py'
  path.write_text('def f():\n  from nash_jax import train\n'
                  'from nash_jax.games.core import Game\n')
  found = list(imports(path, 'nash_jax.policies.fake'))
  assert found == ['nash_jax.train', 'nash_jax.games.core'] or \
      sorted(found) == ['nash_jax.games.core', 'nash_jax.train']
  assert [n for n in found if stage(n) > stage('nash_jax.policies.fake')] \
      == ['nash_jax.train']


def _private_imports(path: Path):
  """``(module, name)`` of every private name (``_x``) a file imports from
  a ``nash_jax`` module, or reads as ``module_lib._x``."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if (isinstance(node, ast.ImportFrom) and node.module and
        node.module.startswith('nash_jax')):
      for alias in node.names:
        if alias.name.startswith('_'):
          yield node.module, alias.name
    if (isinstance(node, ast.Attribute) and node.attr.startswith('_') and
        not node.attr.startswith('__') and isinstance(node.value, ast.Name)
        and node.value.id.endswith('_lib')):
      yield node.value.id, node.attr


SOURCES = sorted([*ROOT.rglob('*.py'),
                  *(ROOT.parent / 'experiments').rglob('*.py')])


@pytest.mark.parametrize('path', SOURCES,
                         ids=[str(p.relative_to(ROOT.parent)) for p in SOURCES])
def test_no_module_imports_a_private_name_from_another(path):
  assert not list(_private_imports(path))


def test_a_private_import_is_caught(tmp_path):
  path = tmp_path / 'fake.py'
  path.write_text('from nash_jax.experiment.checks import _sampled_only\n'
                  'x = checks_lib._private\n')
  assert list(_private_imports(path)) == [
      ('nash_jax.experiment.checks', '_sampled_only'),
      ('checks_lib', '_private')]
