"""Write a dataset back out in any import format, plus Parquet and a `datasets.Dataset` folder.

Each format carries its own fields plus the optional keys `label`, `metadata`, `provenance`,
`review`, `review_note`, `reviewed_at` and `split` (skipped when empty), which the importers read
back: export then import gives the same records. Formats that cannot hold a record (a flat table
cannot hold a multi-turn chat) refuse it with the record's index rather than silently dropping turns.

By default a stored dataset is exported without its `rejected` records: distillation keeps the
answers a teacher got wrong (a label outside the set) as rejected, visible for review, and a file
exported for training elsewhere must not contain them. `statuses` chooses otherwise.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from protege.data.formats import FORMATS, REVIEW_STATES, ExportError
from protege.data.records import Record, load_records
from protege.errors import DataError, UserError
from protege.store import Store

EXPORT_FORMATS = tuple(FORMATS)
DEFAULT_STATUSES = ("accepted", "edited", "pending")
"""Everything but `rejected`."""


def export_records(records: list[Record], fmt: str, out: str | Path) -> Path:
    """Write `records` to `out` in `fmt` (a .json path gets one JSON array, else JSON lines)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    form = FORMATS[fmt]
    rows = []
    for i, record in enumerate(records):
        try:
            rows.append(form.to_row(record))
        except ExportError as e:
            raise DataError(f"record {i}: {e}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    form.write(rows, out)
    return out


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """`accepted,edited` -> ("accepted", "edited"); `all` -> every status; None -> the default."""
    if text is None:
        return DEFAULT_STATUSES
    items = [s.strip() for s in text.split(",") if s.strip()]
    if items == ["all"]:
        return REVIEW_STATES
    unknown = [s for s in items if s not in REVIEW_STATES]
    if unknown or not items:
        raise UserError(f"--status: expected 'all' or some of {', '.join(REVIEW_STATES)}, got {text!r}")
    return tuple(dict.fromkeys(items))


def export_dataset(
    store: Store,
    name: str,
    fmt: str,
    out: str | Path,
    split: str | None = None,
    statuses: tuple[str, ...] = DEFAULT_STATUSES,
) -> dict[str, Any]:
    """Export a stored dataset (`name` or `name@N`), optionally one split, only the records whose
    review status is in `statuses`. Returns the path and how many records were written and left out."""
    everything = load_records(store, name, split=split)
    records = [r for r in everything if r.review in statuses]
    left_out = dict(Counter(r.review for r in everything if r.review not in statuses))
    if everything and not records:
        counts = ", ".join(f"{n} {status}" for status, n in left_out.items())
        raise DataError(f"{name}: no record has review status {', '.join(statuses)} ({counts}); see --status")
    path = export_records(records, fmt, out)
    return {"path": str(path), "records": len(records), "left_out": left_out, "statuses": list(statuses)}
