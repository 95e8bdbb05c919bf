"""The admin's reports (``imagebot usage`` and ``history``) as rows, and those rows as a table, JSON or CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence

from bot.models import Job, UsageRow

FORMATS = ("table", "json", "csv")
Record = dict[str, str | int | float | None]
# A cell starting with one of these is a formula to a spreadsheet: a prompt must never run as one (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def usage_records(rows: Sequence[UsageRow], by: str) -> list[Record]:
    """One record per user, channel or workspace (``by`` names the key's field), as ``platform:id``."""
    return [{by: row.key, "jobs": row.jobs, "images": row.images, "dollars": round(row.dollars, 6)} for row in rows]


HISTORY_FIELDS = (
    "job",
    "created",
    "status",
    "kind",
    "images",
    "cost",
    "model",
    "requester",
    "workspace",
    "channel",
    "prompt",
)


def history_records(jobs: Sequence[Job]) -> list[Record]:
    """One record per job, newest first; ``cost`` is what it counts against budgets (0 when nothing was charged)."""
    return [
        {
            "job": job.id,
            "created": dt.datetime.fromtimestamp(job.created_at, dt.UTC).isoformat(timespec="seconds"),
            "status": job.status.value,
            "kind": job.kind,
            "images": job.images_requested,
            "cost": round(job.cost, 6),
            "model": job.model,
            "requester": job.context.requester,
            "workspace": job.context.workspace,
            "channel": job.context.channel,
            "prompt": job.prompt,
        }
        for job in jobs
    ]


def as_json(records: Sequence[Record]) -> str:
    return json.dumps(list(records), ensure_ascii=False, indent=2) + "\n"


def as_csv(records: Sequence[Record], fields: Sequence[str]) -> str:
    """RFC 4180 CSV with a header row; text that a spreadsheet would run as a formula gets a leading ``'``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields))
    writer.writeheader()
    for record in records:
        writer.writerow({key: _cell(value) for key, value in record.items()})
    return out.getvalue()


def _cell(value: str | int | float | None) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
