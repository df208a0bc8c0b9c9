"""protege: turn a large model's behaviour on a task into a small model you own.

The stages are folders: data/ -> teachers/ -> review/ -> train/ -> evaluate/ -> serve/,
with models/ (registry, fetch, load), store.py (SQLite) and cli.py (the entry point).
"""

__version__ = "0.1.0"
