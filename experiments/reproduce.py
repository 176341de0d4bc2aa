r"""Reproduces the claims of ALGORITHMS.md section 5 as figures.

  python -m experiments.reproduce                         # every figure
  python -m experiments.reproduce --figures=convergence --scale=full
  python -m experiments.reproduce --plot_only             # redraw only

For each figure (nash_jax/figures/, config in experiments/configs/<name>.py)
it writes OUTPUT_DIR/<figure>/: the CSV files behind the figure,
<figure>.png, <figure>.pdf, result.json (config, scale, compute time; written
last, so a directory without it is not a finished result) and runs/ (the
result directories of the individual runs, in the layout of
experiments.matrix_game). --plot_only redraws from those CSVs without
recomputing. Every flag is checked before any work; a bad one stops with one
``error:`` line and exit status 2.
"""

import os
import time

from absl import app, flags

from experiments import common, configs
from nash_jax import experiment, figures

PUBLIC_SCALES = ('default', 'full')

flags.DEFINE_string('scale', 'default', 'default (the committed figures, a '
                    'few minutes on 2 CPU cores) or full (more seeds and '
                    'sizes, n up to 10,000).')
flags.DEFINE_list('figures', list(figures.FIGURES), 'Figures to make '
                  f'(comma-separated): {", ".join(figures.FIGURES)}.')
flags.DEFINE_bool('plot_only', False, 'Redraw the figures from the CSV files '
                  'in OUTPUT_DIR without recomputing.')
flags.DEFINE_string('output_dir', 'results/reproduce', 'Where each figure '
                    'gets its sub-directory.')


def _check_flags(f) -> list[str]:
  """Validates every flag (and each figure's config); returns the figure
  names. Calls :func:`common.fail` on the first bad one."""
  # 'test' is a hidden scale for tests/test_reproduce.py.
  if f.scale not in configs.SCALES:
    common.fail(f'--scale: must be one of {", ".join(PUBLIC_SCALES)}, got '
                f'{f.scale!r}')
  if not f.figures:
    common.fail('--figures: must name at least one figure')
  unknown = [n for n in f.figures if n not in figures.FIGURES]
  if unknown:
    common.fail(f'--figures: unknown figure {unknown[0]!r}; expected some of '
                f'{", ".join(figures.FIGURES)}')
  if len(set(f.figures)) != len(f.figures):
    common.fail('--figures: names a figure twice')
  try:
    experiment.check_output_dir(f.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  for name in f.figures:
    directory = os.path.join(f.output_dir, name)
    if f.plot_only:
      why = figures.missing_results(name, directory)
      if why:
        common.fail(f'--plot_only: no results to redraw figure {name}: {why}'
                    '; run without --plot_only first')
      continue
    try:
      figures.FIGURES[name].validate(configs.get_config(name, f.scale),
                                     directory)
    except common.USER_ERRORS as e:
      common.fail(f'figure {name} at --scale={f.scale}: {e}')
  return list(f.figures)


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  common.start_jax('float64')
  f = flags.FLAGS
  names = _check_flags(f)
  start = time.time()
  for name in names:
    directory = os.path.join(f.output_dir, name)
    t = time.time()
    if not f.plot_only:
      print(f'{name}: {figures.FIGURES[name].claim}', flush=True)
      figures.compute(name, configs.get_config(name, f.scale), directory,
                      f.scale, log=lambda line: print(line, flush=True))
    paths = figures.plot(name, directory)
    print(f'{name}: wrote {", ".join(paths)} ({time.time() - t:.1f}s)',
          flush=True)
  print(f'done in {time.time() - start:.1f}s', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
