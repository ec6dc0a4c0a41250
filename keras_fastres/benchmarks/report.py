"""What the benchmarks share: their argument checks, their progress line and their tables.

Each benchmark module gives its table's `COLUMNS`, (title, result key, format) with the format a
`str.format` pattern or a function of the value, and a `summary(report)` line naming the machine
and the method; `format_table` and `format_markdown` lay any report out with them.
"""

from keras_fastres import models


def check_models(depths, variants):
    """A ValueError for a depth that is not 6n + 2 or an unknown variant, naming the choices."""
    for depth in depths:
        models.blocks_per_stage(depth)
    unknown = [v for v in variants if v not in models.BLOCKS]
    if unknown:
        raise ValueError(f"variants must be taken from {sorted(models.BLOCKS)}, got {unknown}.")


def table_rows(results, columns):
    """The header and one row of formatted cells per result ("-" for a missing value)."""
    rows = []
    for result in results:
        row = []
        for _, key, spec in columns:
            value = result[key]
            row.append("-" if value is None else spec(value) if callable(spec)
                       else spec.format(value))
        rows.append(row)
    return [title for title, _, _ in columns], rows


def format_table(report, columns, summary):
    """The report as an aligned plain-text table under its summary line."""
    header, rows = table_rows(report["results"], columns)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths))
             for row in [header, *rows]]
    return "\n".join([summary, *lines])


def format_markdown(report, columns, summary):
    """The report as a Markdown table under its summary line."""
    header, rows = table_rows(report["results"], columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([summary, "", *lines])

