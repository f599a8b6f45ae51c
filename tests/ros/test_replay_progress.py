"""mfuser-replay progress where stderr is no terminal: periodic log lines, not a bar."""

from __future__ import annotations

import io

from mfuser_ros.replay.progress import ReplayProgress


def test_replay_progress_without_a_terminal_prints_log_lines():
    stream = io.StringIO()  # isatty() is False, as for a log file or a pipe
    progress = ReplayProgress(3, True, stream=stream, interval_s=3600)
    for _ in range(2):
        progress.update()
    progress.close()  # stopped before the end: the last line says how far it got
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("mfuser-replay: 1/3 frames (33.3%)") and "ETA" in lines[0]
    assert lines[1].startswith("mfuser-replay: 2/3 frames (66.7%)") and lines[1].endswith("(stopped)")
    silent = io.StringIO()
    off = ReplayProgress(3, False, stream=silent)
    off.update()
    off.close()
    assert silent.getvalue() == ""


def test_replay_progress_counts_slide_windows_until_closed():
    class Segmenter:
        on_window = None

    stream, segmenter = io.StringIO(), Segmenter()
    progress = ReplayProgress(2, True, stream=stream, interval_s=0)
    progress.watch(segmenter)
    segmenter.on_window(3, 18)  # what slide inference calls after each window
    assert "mfuser-replay: 0/2 frames (0.0%), frame 1: window 3/18" in stream.getvalue()
    progress.close()
    assert segmenter.on_window is None  # a model shared with later runs is left silent
