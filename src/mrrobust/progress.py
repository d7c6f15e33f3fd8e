"""Progress of long steps, for a terminal and for a log.

- `progress_bar(enabled)`: the one progress bar of prepare and evaluate. On a terminal a rich
  bar on stderr (stdout stays the result). When stdout is not a terminal (a cluster job,
  `mrrobust demo > log`) it also prints one plain line per finished step to stdout, with the
  elapsed time and an estimate of what is left (`StepLog`), at most about 100 lines a task.
- `StepLog(what, total)`: those plain lines, for any loop (`benchmark`'s runs, the demo's stages).
- `EpochLines()`: a Lightning callback that prints one such line per finished training epoch
  (with the epoch's losses and mean validation AUC when the module logged them).

A line reads `[evaluate] 12/50 noise-3: 41 s elapsed, about 2 min 10 s left`.
"""

from __future__ import annotations

import functools
import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

MAX_LINES = 100  # plain lines per task at most: a step of a long task is 1/100 of it
MIN_INTERVAL = 2.0  # seconds between two lines of a task (its last step always prints)


def logging_to_file(stream=None) -> bool:
    """True when `stream` (default stdout) is not a terminal: progress goes out as plain lines."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def duration(seconds: float) -> str:
    """`7 s`, `2 min 10 s`, `1 h 05 min` (seconds >= 0)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StepLog:
    """Plain progress lines `[what] done/total step: elapsed, about ... left` on `stream`.

    The estimate is the mean time per step so far times the steps left. A line every `every`
    steps (default: so that a task prints at most `MAX_LINES`) and at most one per `interval`
    seconds; the last step always prints. `clock` returns seconds (tests pass a fake one)."""

    def __init__(self, what: str, total: int | None, stream=None, every: int | None = None,
                 interval: float = MIN_INTERVAL, clock=time.monotonic):
        self.what, self.total, self.stream, self.clock, self.interval = what, total, stream, clock, interval
        self.every = every or (max(1, math.ceil(total / MAX_LINES)) if total else 1)
        self.start, self.done = clock(), 0
        self.printed = -math.inf

    def line(self, done: int, step: str = "") -> str:
        """The text of the line after `done` finished steps."""
        elapsed = self.clock() - self.start
        count = f"{done}/{self.total}" if self.total else f"{done}"
        text = f"[{self.what}] {count}{' ' + step if step else ''}: {duration(elapsed)} elapsed"
        if self.total and 0 < done < self.total:
            text += f", about {duration(elapsed / done * (self.total - done))} left"
        return text

    def advance(self, step: str = "", steps: int = 1) -> None:
        """Count `steps` finished steps; print a line when a multiple of `every` (or the end) is crossed."""
        before, self.done = self.done, self.done + steps
        last = self.total is not None and self.done >= self.total and before < self.total
        due = self.done // self.every > before // self.every and self.clock() - self.printed >= self.interval
        if due or last:
            self.printed = self.clock()
            print(self.line(self.done, step), file=self.stream or sys.stdout, flush=True)


class _LoggedProgress(Progress):
    """A rich Progress that also writes `StepLog` lines for every task it advances."""

    def __init__(self, *columns, stream=None, **kwargs):
        super().__init__(*columns, **kwargs)
        self._logs: dict = {}
        self._stream = stream

    def add_task(self, description: str, *args, total: float | None = 100.0, **kwargs):
        task = super().add_task(description, *args, total=total, **kwargs)
        name = description.split()[0] if description.strip() else "progress"
        self._logs[task] = StepLog(name, None if total is None else int(total), stream=self._stream)
        return task

    def update(self, task_id, *, advance: float | None = None, description: str | None = None, **kwargs) -> None:
        super().update(task_id, advance=advance, description=description, **kwargs)
        if advance:
            self._log(task_id, int(advance))

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id, int(advance))

    def _log(self, task_id, steps: int) -> None:
        log = self._logs.get(task_id)
        if log is not None:
            step = self._tasks[task_id].description.strip()
            if step.split(" ", 1)[0] == log.what:  # "prepare (2 skipped)" -> "(2 skipped)"
                step = step[len(log.what):].strip()
            log.advance(step, steps)


def progress_bar(enabled: bool, stream=None) -> Progress:
    """A rich bar `description | bar | done/total | elapsed | remaining` on stderr when stderr
    is a terminal, and plain `StepLog` lines on `stream` (default stdout) when that is not a
    terminal; nothing at all when not `enabled`. Use as `with progress_bar(on) as bar:`;
    advance with `bar.advance(task)` or `bar.update(task, advance=1)`."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    console = Console(stderr=True)
    bar = enabled and console.is_terminal  # a bar only where someone watches it
    if enabled and logging_to_file(stream):
        return _LoggedProgress(*columns, console=console, disable=not bar, stream=stream)
    return Progress(*columns, console=console, disable=not bar)


@functools.cache
def _epoch_lines_class():
    """`EpochLines`, defined on first use: it subclasses Lightning's Callback, and importing
    Lightning (~10 s of CPU) is for training only, not for every command that shows progress."""
    from lightning.pytorch.callbacks import Callback

    class EpochLines(Callback):
        """Lightning callback: one `StepLog` line per finished training epoch (global rank 0), e.g.
        `[train batch-seed0] 3/8 epoch 2 (train loss 1.02, val loss 1.10, val AUC 0.712): 41 s elapsed,
        about 1 min 50 s left`. The estimate assumes every epoch up to `max_epochs` runs (early
        stopping can end sooner). `name` names the run; `stream` defaults to stdout."""

        def __init__(self, name: str = "train", stream=None):
            self.name, self.stream, self._log = name, stream, None

        def on_train_start(self, trainer, module) -> None:
            self._log = StepLog(f"train {self.name}".strip(), trainer.max_epochs, stream=self.stream, every=1,
                                interval=0.0)
            self._log.done = trainer.current_epoch  # a resumed run counts the epochs it had

        def on_train_epoch_end(self, trainer, module) -> None:
            if self._log is None or not trainer.is_global_zero or trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            shown = [(key, label) for key, label in (("train_loss", "train loss"), ("val_loss", "val loss"),
                                                     ("val_auc_mean", "val AUC")) if key in metrics]
            values = ", ".join(f"{label} {float(metrics[key]):.3f}" for key, label in shown)
            self._log.advance(f"epoch {trainer.current_epoch}{f' ({values})' if values else ''}")

    EpochLines.__qualname__ = "EpochLines"  # pickled (spawned workers) and checkpointed by this name
    return EpochLines


def __getattr__(name: str):
    if name == "EpochLines":  # PEP 562: `from mrrobust.progress import EpochLines` still works
        return _epoch_lines_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
