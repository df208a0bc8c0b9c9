"""protege: turn a large model's behaviour on a task into a small model you own.

The stages are folders: data/ -> teachers/ -> review/ -> train/ -> evaluate/ -> serve/,
with models/ (registry, fetch, load), store.py (SQLite) and cli.py (the entry point).
"""

__version__ = "0.1.0"

import warnings as _warnings

# peft 0.21 probes transformers 5's deprecated `is_gradient_checkpointing` on every adapter it
# wraps; the warning is about peft's code, not the user's, and would print in every training run.
_warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
