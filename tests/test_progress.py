"""Progress bars: Keras's on a terminal, plain lines (no carriage returns, no colours) in a log or a pipe."""

import sys

import keras

from meta_drn_tf import progress


def test_a_redirected_bar_writes_plain_lines_with_its_figures(capsys):
    bar = progress.bar(10, unit_name="step", stateful_metrics=["rate"])  # pytest's captured stdout: no terminal
    assert isinstance(bar, progress.PlainProgbar)
    bar.interval = 0  # a line at every update
    for i in range(1, 11):
        bar.update(i, [("loss", 0.25 * (i % 2) + 0.5), ("rate", float(i))])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 10 and lines[0].startswith("1/10 steps - ") and "loss: 0.75" in lines[0]
    assert "loss: 0.625" in lines[1]  # the running mean, as Keras's bar shows it
    assert "rate: 9" in lines[8]  # a stateful figure: its last value
    assert lines[-1].startswith("10/10 - ")  # Keras's own summary line at the end


def test_a_redirected_bar_writes_at_most_one_line_an_interval(capsys):
    bar = progress.bar(100, unit_name="image")
    for i in range(1, 101):
        bar.update(i)
    assert len(capsys.readouterr().out.splitlines()) == 1  # the end's summary only, within 30 s


def test_a_terminal_gets_kerass_bar(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert type(progress.bar(3)) is keras.utils.Progbar
