"""Status rows as a Rich table, JSON, or one plain line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

COLUMNS = (
    ("ID", "id"), ("ADDRESS", "address"), ("SUFFRAGE", "suffrage"), ("STATE", "state"),
    ("TERM", "term"), ("LAST", "last_index"), ("COMMIT", "commit_index"),
    ("APPLIED", "applied_index"), ("CONTACT", "last_contact"),
    ("SNAPSHOT", "snapshot_index"),
)
JSON_KEYS = ("id", "address", "suffrage", "state", "term", "last_index", "commit_index",
             "applied_index", "last_contact", "snapshot_index", "leader_id", "error")

_STATE_STYLE = {"leader": "bold green", "follower": "cyan", "candidate": "yellow",
                "unreachable": "red", "shutdown": "red", "exited": "red",
                "starting": "dim"}


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "last_contact":
        if row.get("state") == "leader" or not isinstance(value, (int, float)):
            return "-"
        return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.1f}s"
    if value is None:
        return "-"
    return str(value)


def status_table(rows: Sequence[dict[str, Any]], *, title: str | None = None) -> Table:
    # Compact (fits 80 columns for 3 nodes): no vertical rules, one space between.
    table = Table(title=title, title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 0))
    for name, key in COLUMNS:
        table.add_column(name, justify="right" if key.endswith(("index", "term")) else "left",
                         no_wrap=True, min_width=len(name))
    for row in rows:
        cells: list[str | Text] = [cell(row, key) for _, key in COLUMNS]
        state = str(row.get("state") or "-")
        cells[3] = Text(state, style=_STATE_STYLE.get(state.split(" ")[0], ""))
        table.add_row(*cells)
    return table


def status_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps([{k: row.get(k) for k in JSON_KEYS} for row in rows], indent=2)


def status_line(rows: Sequence[dict[str, Any]]) -> str:
    """``n1=leader(t2,c7) n2=follower(t2,c7) ...`` for logs and non-TTY output."""
    parts = []
    for row in rows:
        state = str(row.get("state") or "?")
        if isinstance(row.get("term"), int):
            state += f"(term={row['term']},commit={row.get('commit_index')},"
            state += f"applied={row.get('applied_index')})"
        parts.append(f"{row.get('id') or row.get('address')}={state}")
    return " ".join(parts)
