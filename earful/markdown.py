"""Markdown for the reports (the probes', the study's): one way to write a table."""

from __future__ import annotations


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the ``head`` line, its rule, and one line per row of (already formatted) cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
