"""What the commands write: numbers and tables on stdout, notices and the one-line error on stderr,
CSV files (and the ``--out`` check made before any work)."""
from __future__ import annotations

import sys
from typing import List, Optional

MAX_MESSAGE = 400  # characters of an error line (a layer name can be megabytes long)

VERSUS_HEADERS = ["vs float32 [95 %]", "p", ""]
VERSUS_NOTE = ("top-1/top-5: 95 % Wilson intervals; vs float32: paired difference on the same images, Newcombe "
               "interval, McNemar exact p; ~ = within noise (the interval holds 0)")


def fmt(v, nd=2) -> str:
    """A table cell: N/A for None, small floats in 3 significant digits, others with ``nd`` decimals."""
    if v is None:
        return "N/A"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.{nd}f}"
    return str(v)


def with_ci(value: float, ci) -> str:
    """"81.00 [73.2, 87.1]": a percentage with its 95 % interval."""
    return fmt(value) if ci is None else f"{value:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def accuracy_text(summary: dict) -> str:
    """"top-1 81.00 [73.2, 87.1] %  top-5 95.00 [89.4, 97.9] %  loss 0.8123" from ``Metrics.summary()``."""
    return (f"top-1 {with_ci(summary['top1'], summary['top1_ci'])} %  "
            f"top-5 {with_ci(summary['top5'], summary['top5_ci'])} %  loss {summary['loss']:.4f}")


def versus_cells(row: dict) -> List[str]:
    """Table cells for the paired comparison with float32: delta [interval], McNemar p, early stop."""
    vs = row.get("vs_float32")
    if not vs:
        return ["", "", ""]
    from mixquant_core.evaluation.statistics import within_noise

    lo, hi = vs["delta_ci"]
    noise = " ~" if within_noise(vs) else ""
    stopped = f"stopped early after {row['images']} images" if row.get("stopped_early") else ""
    return [f"{vs['delta_top1']:+.2f} [{lo:+.1f}, {hi:+.1f}]{noise}", f"{vs['p_value']:.2g}", stopped]


def print_table(headers: List[str], rows: List[List[str]]) -> None:
    """Left-aligned columns as wide as their widest cell, a dashed rule under the headers."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def notice(message: str) -> None:
    """A one-line notice on stderr (e.g. an engine falling back to torch)."""
    print(f"mixquant: note: {message}", file=sys.stderr)


def one_line(message: str) -> str:
    """``message`` as one line of at most MAX_MESSAGE characters (and how long it was)."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE] + f"... ({len(line)} characters)"
    return line


def print_error(message: str) -> None:
    """One line on stderr, however long or multi-line the message was."""
    print(f"mixquant: error: {one_line(message)}", file=sys.stderr)


def check_out(args, *inputs) -> None:
    """``--out`` refused before any work: a folder, unwritable, or one of the command's inputs."""
    from mixquant_core.files import check_output

    if getattr(args, "out", None):
        check_output(args.out, [getattr(args, "model", None), *inputs])


def write_csv(path: Optional[str], rows) -> None:
    """The rows (sweep or comparison) as CSV at ``path``, intervals as plain columns; nothing without a path."""
    from mixquant_core.files import atomic_write
    from mixquant_core.studies.tradeoff import rows_to_csv

    if path:
        atomic_write(path, rows_to_csv(rows))
