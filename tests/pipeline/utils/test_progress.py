"""Progress output: tqdm's bar on a terminal, plain periodic log lines otherwise (``pipeline.utils.progress``)."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.utils import progress
from pipeline.utils.progress import LineProgress, is_terminal, show_progress
from tests.helpers import tiny_config, write_tiny_cache
from vpn_head.train.head import train


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_and_no_log_lines(caplog):
    stream = FakeTerminal()
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        bar = show_progress(range(5), "merge", unit="shard", every_s=0, stream=stream)
        assert not isinstance(bar, LineProgress)
        assert list(bar) == [0, 1, 2, 3, 4]
    assert "\r" in stream.getvalue() and "merge" in stream.getvalue()
    assert not caplog.records


def test_a_log_file_gets_plain_lines_and_no_bar(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        bar = show_progress(range(4), "merge", unit="shard", every_s=0, stream=stream)
        assert isinstance(bar, LineProgress) and len(bar) == 4
        seen = []
        for item in bar:
            seen.append(item)
            bar.set_postfix(failed=item)
    assert seen == [0, 1, 2, 3] and stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("merge: 1/4 shard (25%), ") and "ETA" in lines[0] and lines[0].endswith("failed=0")
    assert lines[-1].startswith("merge: 4/4 shard (100%), ") and "ETA" not in lines[-1]
    assert lines[-1].endswith("failed=3") and len(lines) == 4
    assert all("\r" not in line for line in lines)


def test_unknown_length_and_short_loops(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        assert list(show_progress(iter("ab"), "scan", every_s=0, stream=io.StringIO())) == ["a", "b"]
        assert caplog.records[-1].getMessage().startswith("scan: 2/? it, ")
        caplog.clear()
        assert list(show_progress(range(3), "quick", every_s=3600, stream=io.StringIO())) == [0, 1, 2]
    assert not caplog.records  # a loop shorter than the period stays silent: its caller logs the result


def test_disabled_output_says_nothing_anywhere(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        bar = show_progress(range(3), "rank 1", disable=True, every_s=0, stream=stream)
        bar.set_postfix(loss=1.0)
        assert list(bar) == [0, 1, 2]
    assert stream.getvalue() == "" and not caplog.records


def test_is_terminal_handles_odd_streams():
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(object()) and is_terminal(FakeTerminal())


@pytest.mark.usefixtures("one_torch_thread")
def test_training_in_a_log_file_writes_epoch_lines_not_bars(tmp_path, monkeypatch, capsys, caplog):
    """The trainer's batches and scoring report through the one helper: under pytest stderr is no terminal."""
    cache = write_tiny_cache(tmp_path / "nucla", videos={"train": 2, "test": 1})
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="pipeline.utils.progress"):
        train(tiny_config(cache, tmp_path / "runs", epochs=1, variant="i3d"))
    err = capsys.readouterr().err
    assert "\r" not in err and "batch/s" not in err  # no tqdm redraws in the log
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("tiny epoch 1/1: 1/1 batch (100%)") and "loss=" in line for line in lines), lines
    assert any(line.startswith("score: ") for line in lines), lines
