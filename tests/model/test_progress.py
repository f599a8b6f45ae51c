"""Progress lines without a terminal: count, rate, ETA; slide windows of a large image move them too."""

from __future__ import annotations

import torch

from mfuser_model.inference import slide_scores, slide_windows
from mfuser_model.progress import ProgressLog, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_at_first_item_every_interval_and_last():
    clock, lines = FakeClock(), []
    log = ProgressLog(4, "cs", lines.append, interval_s=10.0, clock=clock)
    clock.t += 2.0
    log.update()  # first item: always a line
    clock.t += 2.0
    log.update()  # 4 s since the last line: none
    clock.t += 9.0
    log.partial(1, 4)  # 11 s: a line, and the window counts towards the rate
    clock.t += 1.0
    log.update()
    clock.t += 1.0
    log.update()  # last item: always a line
    assert lines == [
        "cs: 1/4 images (25.0%), 2.00 s/image, ETA 6 s",
        "cs: 2/4 images (50.0%), image 3: window 1/4, 5.78 s/image, ETA 10 s",
        "cs: 4/4 images (100.0%), 3.75 s/image, done in 15 s",
    ]
    assert format_duration(185) == "3 min 05 s" and format_duration(7620) == "2 h 07 min"


def test_slide_inference_reports_each_window():
    calls = []
    images = torch.zeros(1, 3, 40, 100)
    scores = slide_scores(lambda x: x[:, :2], images, 32, 24, 2, on_window=lambda d, t: calls.append((d, t)))
    rows, cols = slide_windows(40, 100, 32, 24)
    assert scores.shape == (1, 2, 40, 100)
    assert calls == [(i, rows * cols) for i in range(1, rows * cols + 1)] and rows * cols == 8
