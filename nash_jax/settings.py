"""Settings declared once: dataclass fields that carry their flag's help.

Each group of settings (the game or environment, the algorithm, the policy,
the run) is a frozen dataclass whose fields are made by :func:`setting`:
default, help text and value type in one place. The experiment binaries
generate their absl flags from these fields (same names, same defaults,
same help), and an experiment's config is the composition of its groups
(:func:`compose`), so no setting is written down twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def setting(default: Any, help: str, kind: type | None = None,
            flag: bool = True, item: type = int):
  """A dataclass field with its flag's help text and value type.

  Args:
    default: the default value (a tuple for list-valued settings).
    help: one or two sentences for ``--help``.
    kind: ``str``, ``int``, ``float``, ``bool`` or ``tuple`` (a
      comma-separated list of ``item``); default: the type of ``default``
      (required when it is None).
    flag: False for settings that binaries set themselves (no flag).
    item: the element type of a ``tuple`` setting (``int`` or ``float``).
  """
  kind = kind or type(default)
  if kind not in (str, int, float, bool, tuple):
    raise TypeError(f'no flag type for {kind}')
  return dataclasses.field(default=default, metadata={
      'help': help, 'kind': kind, 'flag': flag, 'item': item})


def settings_of(cls) -> list[dataclasses.Field]:
  """The fields of a settings group (or composed config) made by
  :func:`setting`, in declaration order."""
  return [f for f in dataclasses.fields(cls) if 'help' in f.metadata]


def compose(name: str, groups: Sequence, doc: str,
            methods: dict | None = None,
            defaults: dict | None = None) -> type:
  """A frozen dataclass with the fields of ``groups`` (flat, in order).

  Args:
    name: the class name.
    groups: settings classes, or ``(class, excluded field names)`` pairs
      for settings that this composition fixes (they take the group's
      default, or ``defaults``, when the group is rebuilt by
      :func:`group_of`).
    doc: the class docstring.
    methods: extra attributes of the class.
    defaults: this composition's own defaults of some fields (a binary's
      defaults; the help text stays the group's).

  A field name shared by two groups is an error: flat names are the flags.
  """
  defaults = dict(defaults or {})
  fields, seen, fixed = [], {}, {}
  plain = []
  for group in groups:
    group, excluded = group if isinstance(group, tuple) else (group, ())
    plain.append(group)
    for f in dataclasses.fields(group):
      if f.name in excluded:
        fixed[f.name] = defaults.pop(f.name, f.default)
        continue
      if f.name in seen:
        raise TypeError(f'{f.name} is in {seen[f.name]} and {group.__name__}')
      seen[f.name] = group.__name__
      default = defaults.pop(f.name, f.default)
      fields.append((f.name, f.type, dataclasses.field(
          default=default, metadata=f.metadata)))
  if defaults:
    raise TypeError(f'defaults of unknown settings: {sorted(defaults)}')
  namespace = {'replace': lambda self, **kw: dataclasses.replace(self, **kw),
               '__doc__': doc, 'groups': tuple(plain), 'fixed': fixed}
  namespace.update(methods or {})
  return dataclasses.make_dataclass(name, fields, frozen=True,
                                    namespace=namespace)


def group_of(config, group: type, **values):
  """The ``group`` settings of a composed ``config`` (fields the
  composition fixes take their fixed values; ``values`` override)."""
  fixed = getattr(config, 'fixed', {})
  kwargs = {}
  for f in dataclasses.fields(group):
    if f.name in values:
      kwargs[f.name] = values[f.name]
    elif hasattr(config, f.name) and f.name in config.__dataclass_fields__:
      kwargs[f.name] = getattr(config, f.name)
    elif f.name in fixed:
      kwargs[f.name] = fixed[f.name]
  return group(**kwargs)
