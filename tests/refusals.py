"""Refusals of bad input by an experiment binary, many cases per process.

A refusal is what a user sees from ``python -m experiments.X --bad=value``:
exit status 2, one ``error: --flag: ...`` line on stderr, nothing on stdout,
nothing written. A process per case pays for importing JAX and nash_jax
each time; :func:`run_cases` starts one process that does the imports once
and forks a child per case, and the child executes the binary as
``python -m`` does (``runpy`` with ``run_name='__main__'``, its own argv)
with its stdout and stderr sent to files. A refusal exits
before any JAX computation, so forking after the imports is safe; a case
that is not refused runs its job in the child (and its test then fails).

A refusal table is a list of ``(args, expected)`` cases: :func:`run_table`
runs them all, each with an output path of its own, and
:func:`assert_refused` checks one outcome.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

# Modules imported once before the children fork (not the binary itself:
# running it again would define its flags twice).
PRELOAD = ('jax', 'experiments.common', 'nash_jax.experiment')

_DRIVER = textwrap.dedent('''
    import importlib, json, os, runpy, sys
    spec = json.loads(sys.argv[1])
    for name in spec['preload']:
      importlib.import_module(name)
    for i, args in enumerate(spec['cases']):
      files = [os.path.join(spec['tmp'], f'{i}.{s}') for s in ('out', 'err')]
      pid = os.fork()
      if pid == 0:
        for fd, name in zip((1, 2), files):
          os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [spec['module'], *args]
        code = 0
        try:
          runpy.run_module(spec['module'], run_name='__main__',
                           alter_sys=True)
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else 1
        except BaseException:
          import traceback; traceback.print_exc(); code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
      _, status = os.waitpid(pid, 0)
      text = [open(name).read() for name in files]
      print(json.dumps([os.waitstatus_to_exitcode(status), *text]),
            flush=True)
''')


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What one case's process did."""
  returncode: int
  stdout: str
  stderr: str

  def lines(self) -> list[str]:
    """The non-blank lines of stderr."""
    return [line for line in self.stderr.splitlines() if line.strip()]


def run_cases(module: str, cases: list[list[str]], tmp: Path,
              env: dict | None = None, timeout: float = 600,
              preload: tuple[str, ...] = PRELOAD) -> list[Outcome]:
  """Runs ``python -m module *args`` for each ``args`` of ``cases`` (as
  forked children of one process, see the module docstring); returns one
  :class:`Outcome` per case, in order. ``tmp`` holds the children's output
  files."""
  tmp.mkdir(parents=True, exist_ok=True)
  spec = {'module': module, 'cases': cases, 'tmp': str(tmp),
          'preload': list(preload)}
  env = dict(os.environ if env is None else env)
  env['PYTHONPATH'] = str(ROOT)
  proc = subprocess.run([sys.executable, '-c', _DRIVER, json.dumps(spec)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [Outcome(*json.loads(line)) for line in proc.stdout.splitlines()]
  assert len(results) == len(cases), proc.stderr[-3000:]
  return results


def run_table(module: str, table: list[tuple[Any, Any]], tmp: Path,
              argv: Callable[[Path, Any], list[str]], env: dict | None = None,
              timeout: float = 600,
              suffix: str = '') -> list[tuple[Outcome, Path]]:
  """Runs the cases ``(args, expected)`` of a refusal table (with
  :func:`run_cases`): case ``i`` as ``python -m module *argv(out, args)``,
  ``out = tmp / f'out{i}{suffix}'`` the output path it must not create.
  Returns ``(outcome, out)`` per case, in order."""
  outs = [tmp / f'out{i}{suffix}' for i in range(len(table))]
  cases = [argv(out, args) for out, (args, _) in zip(outs, table)]
  outcomes = run_cases(module, cases, tmp / 'driver', env=env,
                       timeout=timeout)
  return list(zip(outcomes, outs))


def assert_refused(outcome: Outcome, start: str,
                   out: Path | None = None) -> str:
  """A refusal: exit status 2, one line on stderr and it begins with
  ``start``, nothing on stdout, ``out`` (when given) not created. Returns
  the line."""
  assert outcome.returncode == 2, outcome.stderr[-2000:]
  lines = outcome.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(start), outcome.stderr
  assert outcome.stdout == '', outcome.stdout[-2000:]
  assert out is None or not out.exists(), out
  return lines[0]
