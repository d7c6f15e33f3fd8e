"""mrrobust.data.readahead: files are loaded in order, never more than `ahead` beyond the
finished ones, bad files are passed over, and the thread stops when the run ends."""

from __future__ import annotations

import threading
import time

import pytest

from mrrobust.data import readahead
from mrrobust.data.readahead import ReadAhead, load


def _wait_for(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def loaded(monkeypatch):
    calls, lock = [], threading.Lock()

    def record(path):
        with lock:
            calls.append(path)
        load(path)

    monkeypatch.setattr(readahead, "load", record)
    return calls


def test_loads_in_order_and_at_most_ahead(tmp_path, loaded):
    files = []
    for i in range(5):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes(100 + i))
    with ReadAhead(files, ahead=2) as reader:
        assert _wait_for(lambda: len(loaded) == 2)
        time.sleep(0.1)
        assert loaded == files[:2]  # waits for a finished file before the third
        reader.done()
        assert _wait_for(lambda: len(loaded) == 3)
        for _ in range(2):
            reader.done()
        assert _wait_for(lambda: len(loaded) == 5)
    assert loaded == files


def test_bad_files_are_passed_over(tmp_path, loaded):
    empty, good = tmp_path / "empty", tmp_path / "good"
    empty.write_bytes(b"")
    good.write_bytes(b"x" * 10_000)
    files = [tmp_path / "missing", empty, tmp_path, good]
    with ReadAhead(files, ahead=len(files)):
        assert _wait_for(lambda: len(loaded) == len(files))
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")


def test_leaving_early_stops_the_thread(tmp_path):
    files = [tmp_path / f"f{i}" for i in range(4)]
    for path in files:
        path.write_bytes(b"x")
    reader = ReadAhead(files, ahead=1)
    with reader:
        pass  # the consumer stops after no result: the thread waits for a slot
    assert not reader._thread.is_alive()


def test_load_without_map_populate_reads_to_the_end(tmp_path, monkeypatch):
    import mmap

    path = tmp_path / "f"
    path.write_bytes(b"x" * (readahead.CHUNK_BYTES + 5))
    monkeypatch.delattr(mmap, "MAP_POPULATE", raising=False)
    load(path)  # the fallback: plain reads of the whole file
    with pytest.raises(IsADirectoryError):
        load(tmp_path)


def test_prefetch_keeps_order_stays_at_most_ahead_and_raises_where_the_producer_failed():
    from mrrobust.data.readahead import prefetch

    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"item {i}")
            produced.append(i)
            yield i

    got = []
    for item in prefetch(items(6), ahead=2):
        time.sleep(0.05)  # the producer may run ahead meanwhile, by at most `ahead` + 1
        assert len(produced) <= item + 1 + 2 + 1
        got.append(item)
    assert got == list(range(6))
    produced.clear()
    with pytest.raises(ValueError, match="item 3"):
        assert [i for i in prefetch(items(6, fail_at=3), ahead=1)] == "never"
    assert produced == [0, 1, 2]


def test_prefetch_closed_early_stops_its_thread():
    from mrrobust.data.readahead import prefetch

    before = threading.active_count()
    stream = prefetch(iter(range(1000)), ahead=1)
    assert next(stream) == 0
    stream.close()
    assert _wait_for(lambda: threading.active_count() == before)
