"""report.md: the report document as GitHub-flavoured Markdown; figures link to figures/*.png."""

from __future__ import annotations

from analysis.document import Bullets, Document, Figure, Table


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_escape(h) for h in table.headers) + " |"]
    lines.append("|" + "".join("---:|" if numeric else "---|" for numeric in table.numeric))
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in table.rows]
    return lines


def render_markdown(document: Document) -> str:
    """The whole report as Markdown text."""
    lines = [f"# {document.title}", ""]
    for section in document.sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _table(block)
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}](figures/{block.name}.png)")
                lines += ["", f"*{block.caption}* ([SVG](figures/{block.name}.svg))"]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
