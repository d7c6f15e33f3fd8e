"""The report as Markdown: sections of paragraphs, bullet lists, tables and figures
(`tables.Section`) -> `report.md`, figures linked from `figures/`."""

from __future__ import annotations

from pathlib import Path

from mrrobust.report.figures import Figure
from mrrobust.report.tables import Bullets, Section, Table

EMBEDDABLE = ("png", "svg")


def table(block: Table) -> str:
    lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in block.rows]) + "\n"


def figure(block: Figure, out: Path) -> str:
    shown = [p for p in block.paths if p.suffix.lstrip(".") in EMBEDDABLE]
    if shown:
        return f"![{block.title}]({shown[0].relative_to(out).as_posix()})\n"
    return "".join(f"[{block.title} ({p.suffix.lstrip('.')})]({p.relative_to(out).as_posix()})\n" for p in block.paths)


def block_text(block, out: Path) -> str:
    if isinstance(block, Table):
        return table(block)
    if isinstance(block, Figure):
        return figure(block, out)
    if isinstance(block, Bullets):
        return "".join(f"- {item}\n" for item in block.items)
    return f"{block}\n"


def render(title: str, sections: list[Section], out: Path) -> str:
    """The whole report as Markdown text."""
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.title}\n")
        parts += [block_text(block, out) for block in section.blocks]
    return "\n".join(parts)
