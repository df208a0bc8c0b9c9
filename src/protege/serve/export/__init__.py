"""Export a trained student for deployment: merged Hugging Face folder, GGUF (llama.cpp), Ollama,
vLLM; each export checked against the model it came from.

- export.py     `run_export`: options, temp folder renamed into place, model card, export.json.
- source.py     what is exported (run, adapter, folder, registry name) and its merged float32 model.
- formats.py    the four formats; gguf_file.py + gguf_vocab.py write GGUF with the `gguf` package.
- template.py   the chat template cut into turns: Ollama TEMPLATE, stop strings, end-of-turn ids.
- check.py      greedy answers and logits of the exported file against the reference.
"""

from protege.serve.export.export import FORMATS, ExportResult, run_export

__all__ = ["FORMATS", "ExportResult", "run_export"]
