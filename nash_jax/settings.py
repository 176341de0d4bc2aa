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
from typing import Any, NamedTuple, Sequence

from nash_jax.errors import ConfigError


def setting(default: Any, help: str, kind: type | None = None,
            flag: bool = True, item: type = int, minimum: Any = None):
  """A dataclass field with its flag's help text and value type.

  Args:
    default: the default value (a tuple for list-valued settings).
    help: one or two sentences for ``--help``.
    kind: ``str``, ``int``, ``float``, ``bool`` or ``tuple`` (a
      comma-separated list of ``item``); default: the type of ``default``
      (required when it is None).
    flag: False for settings that binaries set themselves (no flag).
    item: the element type of a ``tuple`` setting (``int`` or ``float``).
    minimum: the smallest value a run accepts (``None``: no bound, or
      checked elsewhere); :func:`check_minimums` refuses smaller ones.
  """
  kind = kind or type(default)
  if kind not in (str, int, float, bool, tuple):
    raise TypeError(f'no flag type for {kind}')
  return dataclasses.field(default=default, metadata={
      'help': help, 'kind': kind, 'flag': flag, 'item': item,
      'minimum': minimum})


def settings_of(cls) -> list[dataclasses.Field]:
  """The fields of a settings group (or composed config) made by
  :func:`setting`, in declaration order."""
  return [f for f in dataclasses.fields(cls) if 'help' in f.metadata]


class Group(NamedTuple):
  """A settings group in a composition: the class, the fields the
  composition fixes (they take the group's default, or the composition's
  ``defaults``, when the group is rebuilt by :func:`group_of`), and flat
  names of fields whose flag is not the field's name (``{'seed':
  'prompt_seed'}``)."""

  cls: type
  exclude: tuple[str, ...] = ()
  names: dict | None = None


def _group(entry) -> Group:
  if isinstance(entry, Group):
    return entry
  if isinstance(entry, tuple):
    return Group(entry[0], tuple(entry[1]))
  return Group(entry)


def compose(name: str, groups: Sequence, doc: str,
            methods: dict | None = None,
            defaults: dict | None = None,
            minimums: dict | None = None) -> type:
  """A frozen dataclass with the fields of ``groups`` (flat, in order).

  Args:
    name: the class name.
    groups: settings classes (a library's own dataclass, whose settings
      are the fields made by :func:`setting`; its other fields are fixed),
      ``(class, excluded field names)`` pairs, or :class:`Group` entries.
    doc: the class docstring.
    methods: extra attributes of the class.
    defaults: this composition's own defaults of some fields, by flat name
      (a binary's defaults; the help text stays the group's).
    minimums: this composition's own lower bounds of some fields (see
      :func:`setting`).

  A flat name shared by two groups is an error: flat names are the flags.
  """
  defaults = dict(defaults or {})
  minimums = dict(minimums or {})
  fields, seen, fixed, flat_names = [], {}, {}, {}
  plain = []
  for entry in groups:
    group = _group(entry)
    plain.append(group.cls)
    names = dict(group.names or {})
    flat_names[group.cls] = names
    for f in dataclasses.fields(group.cls):
      flat = names.get(f.name, f.name)
      if f.name in group.exclude or 'help' not in f.metadata:
        fixed[flat] = defaults.pop(flat, f.default)
        continue
      if flat in seen:
        raise TypeError(f'{flat} is in {seen[flat]} and '
                        f'{group.cls.__name__}')
      seen[flat] = group.cls.__name__
      default = defaults.pop(flat, f.default)
      metadata = f.metadata
      if flat in minimums:
        metadata = {**metadata, 'minimum': minimums.pop(flat)}
      fields.append((flat, f.type, dataclasses.field(
          default=default, metadata=metadata)))
  if defaults:
    raise TypeError(f'defaults of unknown settings: {sorted(defaults)}')
  if minimums:
    raise TypeError(f'minimums of unknown settings: {sorted(minimums)}')
  namespace = {'replace': lambda self, **kw: dataclasses.replace(self, **kw),
               '__doc__': doc, 'groups': tuple(plain), 'fixed': fixed,
               'flat_names': flat_names}
  namespace.update(methods or {})
  return dataclasses.make_dataclass(name, fields, frozen=True,
                                    namespace=namespace)


def group_of(config, group: type, **values):
  """The ``group`` settings of a composed ``config``: the library's own
  dataclass rebuilt from the flat fields (fields the composition fixes
  take their fixed values; ``values``, by field name, override)."""
  fixed = getattr(config, 'fixed', {})
  names = getattr(config, 'flat_names', {}).get(group, {})
  kwargs = {}
  for f in dataclasses.fields(group):
    flat = names.get(f.name, f.name)
    if f.name in values:
      kwargs[f.name] = values[f.name]
    elif hasattr(config, flat) and flat in config.__dataclass_fields__:
      kwargs[f.name] = getattr(config, flat)
    elif flat in fixed and fixed[flat] is not dataclasses.MISSING:
      kwargs[f.name] = fixed[flat]
  return group(**kwargs)


def check_minimums(config) -> None:
  """Refuses a setting below the ``minimum`` its field declares (a value
  of ``None`` is a default still to be resolved, and passes).

  Raises:
    ConfigError: ``--num_steps: must be >= 1, got 0``.
  """
  for field in settings_of(type(config)):
    minimum = field.metadata.get('minimum')
    value = getattr(config, field.name)
    if minimum is not None and value is not None and value < minimum:
      raise ConfigError(field.name, f'must be >= {minimum}, got {value}')
