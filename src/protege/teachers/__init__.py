"""Teachers: get a large model's behaviour on a task into a dataset, with its provenance.

- client.py       one interface over an OpenAI-compatible endpoint and an in-process model
                  (`make_teacher`), with one retry policy (backoff + jitter, Retry-After).
- cache.py        `TeacherSession`: cached (calls table), bounded-concurrency, cost-accounted calls.
- distill.py      `distill(ws, task, inputs, teacher, ...)`: one record per input, resumable.
- selfinstruct.py `self_instruct(ws, seeds, num, teacher, ...)`: the Alpaca pipeline.
- capture.py      `create_app(store, upstream)`: the logging proxy; logs.py turns its logs into datasets.
"""
