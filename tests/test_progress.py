"""Progress lines for logs: one plain line per finished step with elapsed time and what is left."""

import io
import re

import pytest

from mrrobust.progress import EpochLines, StepLog, duration, progress_bar


class Clock:
    """A fake monotonic clock advanced by hand (seconds)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_duration_formats():
    assert [duration(s) for s in (0, 7.4, 59.6, 130, 3725)] == ["0 s", "7 s", "1 min 00 s", "2 min 10 s", "1 h 02 min"]


def test_step_lines_estimate_the_rest_from_the_mean_step_time():
    clock, stream = Clock(), io.StringIO()
    log = StepLog("evaluate", 4, stream=stream, clock=clock)
    for step, seconds in zip(("clean-0", "noise-1", "noise-2", "noise-3"), (10, 20, 30, 40)):
        clock.now += seconds - (clock.now - 100.0)  # elapsed 10, 20, 30, 40 s after each step
        log.advance(step)
    lines = stream.getvalue().splitlines()
    assert lines == ["[evaluate] 1/4 clean-0: 10 s elapsed, about 30 s left",
                     "[evaluate] 2/4 noise-1: 20 s elapsed, about 20 s left",
                     "[evaluate] 3/4 noise-2: 30 s elapsed, about 10 s left",
                     "[evaluate] 4/4 noise-3: 40 s elapsed"]


@pytest.mark.parametrize("total", [1, 7, 100, 101, 2570])
def test_a_long_task_prints_at_most_about_a_hundred_lines_and_always_its_end(total):
    stream = io.StringIO()
    clock = Clock()
    log = StepLog("prepare", total, stream=stream, clock=clock)
    for _ in range(total):
        clock.now += 5.0
        log.advance()
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 101 and lines[-1].startswith(f"[prepare] {total}/{total}")
    done = [int(re.match(r"\[prepare\] (\d+)/", line).group(1)) for line in lines]
    assert done == sorted(done) and len(set(done)) == len(done)


def test_progress_bar_writes_lines_to_a_log_and_nothing_to_a_terminal():
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        with progress_bar(True, stream=stream) as bar:
            task = bar.add_task("evaluate", total=3)
            for cell in ("clean-0", "noise-1", "noise-2"):
                bar.update(task, description=cell)
                bar.advance(task)
    lines = log.getvalue().splitlines()
    # fast steps: the first line, then none for MIN_INTERVAL seconds, and always the last
    assert [line.split(":")[0] for line in lines] == ["[evaluate] 1/3 clean-0", "[evaluate] 3/3 noise-2"]
    assert "left" in lines[0] and "left" not in lines[-1]
    assert terminal.getvalue() == ""
    quiet = io.StringIO()
    with progress_bar(False, stream=quiet) as bar:  # --quiet / progress=False: nothing anywhere
        bar.update(bar.add_task("prepare", total=2), advance=2)
    assert quiet.getvalue() == ""


def test_progress_bar_update_with_advance_counts_like_advance():
    stream = io.StringIO()
    with progress_bar(True, stream=stream) as bar:
        job = bar.add_task("prepare 5 volumes (0 done before)", total=5)
        for _ in range(5):
            bar.update(job, advance=1, description="prepare (0 skipped)")
    lines = stream.getvalue().splitlines()
    assert lines == ["[prepare] 1/5 (0 skipped): 0 s elapsed, about 0 s left", "[prepare] 5/5 (0 skipped): 0 s elapsed"]


def test_lines_are_at_least_an_interval_apart_except_the_last():
    clock, stream = Clock(), io.StringIO()
    log = StepLog("synth", 10, stream=stream, clock=clock, interval=2.0)
    for _ in range(10):
        clock.now += 0.5
        log.advance()
    done = [line.split()[1].rstrip(":") for line in stream.getvalue().splitlines()]
    assert done == ["1/10", "5/10", "9/10", "10/10"]


def test_epoch_lines_from_a_real_lightning_fit():
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(16, 2)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    stream = io.StringIO()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[EpochLines("batch-seed0", stream=stream)])
    trainer.fit(Tiny(), data, data)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[train batch-seed0] 1/3 epoch 0 (train loss ") and "val loss" in lines[0]
    assert "left" in lines[1] and lines[2].startswith("[train batch-seed0] 3/3 epoch 2")
