"""Drafter names -> classes, and construction with validated options."""
from __future__ import annotations

import dataclasses

from specjax.drafters.base import Drafter, NoDrafter


def _classes():
  from specjax.drafters.lookahead import Lookahead
  from specjax.drafters.ngram import PromptLookup
  return {"none": NoDrafter, "pld": PromptLookup, "lookahead": Lookahead}


def names() -> list[str]:
  return list(_classes())


def make(drafter, **options) -> Drafter:
  if isinstance(drafter, Drafter):
    if options:
      drafter = dataclasses.replace(drafter, **options)
  else:
    classes = _classes()
    if drafter not in classes:
      raise ValueError(f"unknown drafter {drafter!r}; choose from {', '.join(classes)}")
    cls = classes[drafter]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - fields
    if unknown:
      raise ValueError(f"drafter {drafter!r} has no option(s) {sorted(unknown)}; its options: {sorted(fields) or 'none'}")
    drafter = cls(**options)
  drafter.validate()
  return drafter
