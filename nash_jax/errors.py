"""Errors shared by every stage of the data flow."""

from __future__ import annotations


class ConfigError(ValueError):
  """A setting that cannot be used; names the flag (``--flag: message``)."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag
