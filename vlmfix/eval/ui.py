"""Progress bars with ETA and result tables (rich), silent on non-zero ranks so logs are not interleaved."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

console = Console(stderr=True)


def progress_factory(description: str, enabled: bool = True):
    """``make(total) -> advance(n)``; ``advance(None)`` closes the bar."""

    def make(total: int):
        if not enabled:
            return lambda n: None
        prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        transient=False)
        prog.start()
        task = prog.add_task(description, total=total)

        def advance(n):
            if n is None:
                prog.stop()
            else:
                prog.advance(task, n)

        return advance

    return make


def iter_progress(items, description: str, enabled: bool = True):
    if not enabled:
        yield from items
        return
    items = list(items)
    advance = progress_factory(description)(len(items))
    try:
        for x in items:
            yield x
            advance(1)
    finally:
        advance(None)


def pct(x) -> str:
    return f"{100 * x:.2f}"


def pope_table(title: str, runs: dict[str, dict]) -> Table:
    """Rows: method set × split; columns: the POPE metrics in percent."""
    t = Table(title=title)
    for col in ("run", "split", "n", "acc", "prec", "rec", "F1", "yes%", "unk%"):
        t.add_column(col, justify="right" if col not in ("run", "split") else "left")
    for label, res in runs.items():
        for split, m in res["splits"].items():
            t.add_row(label, split, str(m["n"]), pct(m["accuracy"]), pct(m["precision"]), pct(m["recall"]),
                      pct(m["f1"]), pct(m["yes_ratio"]), pct(m["unknown_ratio"]))
        if len(res["splits"]) > 1:
            m = res["mean"]
            t.add_row(label, "mean", "", pct(m["accuracy"]), pct(m["precision"]), pct(m["recall"]), pct(m["f1"]),
                      pct(m["yes_ratio"]), "")
    return t


def chair_table(title: str, runs: dict[str, dict]) -> Table:
    t = Table(title=title)
    for col in ("run", "caps", "CHAIR_s", "CHAIR_i", "rec", "prec", "F1", "len"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for label, res in runs.items():
        m = res["metrics"]
        t.add_row(label, str(m["num_captions"]), pct(m["chair_s"]), pct(m["chair_i"]), pct(m["recall"]),
                  pct(m["precision"]), pct(m["f1"]), f"{m['len']:.1f}")
    return t


def show(table):
    Console().print(table)
