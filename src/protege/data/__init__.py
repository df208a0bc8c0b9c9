"""Data in: the canonical record, datasets in the workspace, importers, quality checks.

- records.py    `Record` and named, content-versioned datasets (`save_dataset`, `load_records`).
- files.py      the one reader and writer of JSONL / JSON / CSV / Parquet / `datasets` files.
- formats.py    one `Format` record per format: detection, --map fields, row <-> record.
- importers.py  a file -> records, every problem as file:line: field; validate.py lists them.
- export.py     records -> a file in any format (rejected records left out by default).
- quality.py    dedup, decontamination, splits; text.py the words and ROUGE-L every stage shares.
"""
