"""Drafters: one module per method. `load(name)` builds one by name ("pld", "medusa", "medusa:PATH")."""


def load(name: str, **options):
  """A drafter by name, with its weights for trained ones (see registry.make)."""
  from specjax.drafters import registry
  return registry.make(name, **options)
