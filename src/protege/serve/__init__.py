"""Serve: an OpenAI-compatible server for a base model and its LoRA adapters.

- cli.py        `protege serve`; app.py resolves what to serve (workspace passed in) and runs uvicorn.
- server.py     the OpenAI routes; admin.py the adapter routes (own key, --adapter-dir only);
                limits.py 413 for oversize bodies; protocol.py request/response shapes.
- engine.py     what the routes call: adapters.py (model + adapters under client-facing names),
                scheduler.py (queue, dynamic batching, worker thread), decode.py (batched generation),
                models/choice.py (constrained choice, shared with training and teachers), metrics.py.
- launch.py     `ServerProcess`: start `protege serve` as a child, keys via env, log in the workspace.
"""
