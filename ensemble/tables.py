"""Markdown tables, for the terminal, REPORT.md and the docs: one formatter (tabulate's GitHub format)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tabulate import tabulate


def markdown_table(rows: Iterable[Sequence], headers: Sequence[str]) -> str:
    """Rows of already formatted cells (or plain values) under ``headers`` as a GitHub markdown table."""
    return tabulate(list(rows), headers=list(headers), tablefmt="github", disable_numparse=True)
