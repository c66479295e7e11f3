"""Value checks shared by every entry point (the API, the command line, batch jobs, the bench, training).

Imports nothing from specjax, no JAX and no numpy (numpy's scalars register with `numbers`): the command
line's argument parser uses them before JAX starts.
"""
from __future__ import annotations

import numbers


def _plain(v, kind, builtin) -> bool:
  """A Python `builtin` (bools excluded) or a numpy scalar of `kind`, without importing numpy."""
  if isinstance(v, bool) or type(v).__name__ == "bool_":
    return False
  return isinstance(v, builtin) or (isinstance(v, kind) and type(v).__module__ == "numpy")


def is_int(v) -> bool:
  """An integer (Python or numpy), not a bool."""
  return _plain(v, numbers.Integral, int)


def is_finite(v) -> bool:
  """A real number (not a bool) of a size a float holds: no NaN, no infinity, no 400-digit integer."""
  return _plain(v, numbers.Real, (int, float)) and abs(v) < 1e300


def positive_int(value, name: str) -> int:
  """`value` as an int; ValueError "NAME must be a positive integer, got VALUE" unless it is an integer >= 1."""
  if not is_int(value) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def flag(value, name: str) -> bool:
  """`value` unless it is not True or False."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}")
  return value
