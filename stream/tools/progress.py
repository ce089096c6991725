"""The terminal progress bar of a replay: events, rate, elapsed time and ETA, on stderr.

Apart from ``stream.tools.replay`` so that module is pacing and producing only; rich is
imported when a bar is actually shown.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(total: int | None) -> Any:
    """A rich ``Progress`` for ``total`` events (no ETA column when the total is unknown)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- ev/s" if speed is None else f"{speed:,.0f} ev/s")

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn(), RateColumn(), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    # stderr: stdout stays free for whatever the caller prints.
    return Progress(*columns, console=Console(stderr=True))
