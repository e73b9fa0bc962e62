"""Operator labels for robot episodes: from a person at the terminal, or scripted for tests.

Labels: ``success`` (ends the episode; reward 1, terminal), ``failure`` (ends it; reward 0,
terminal: the task cannot be completed any more), ``abort`` (ends it; kept on disk but not
used for training: the scene was wrong, someone intervened), ``estop`` (emergency stop: the
robot is halted at once, the episode is kept on disk and the run stops). An episode that
reaches its step limit without a label is a failure by timeout (reward 0, bootstrapped
as a time-limit truncation), unless the operator labels it at the end.

A labeller has ``begin(episode)``, ``poll(step, obs) -> Label | None`` (non-blocking, called
at every control step) and ``at_end(timed_out) -> Label`` (when no label came in the episode).
"""

from __future__ import annotations

import enum
import queue
import sys
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np


class Label(str, enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ABORT = "abort"
    ESTOP = "estop"


KEYS = {
    "s": Label.SUCCESS,
    "f": Label.FAILURE,
    "a": Label.ABORT,
    "x": Label.ESTOP,
    "e": Label.ESTOP,
}


class Labeller(Protocol):
    def begin(self, episode: int) -> None: ...

    def poll(self, step: int, obs: np.ndarray) -> Label | None: ...

    def at_end(self, timed_out: bool) -> Label: ...


class ScriptedLabeller:
    """Labels from a function ``fn(episode, step, obs) -> Label | None`` (tests, sim oracles).

    ``end_label`` is given when an episode times out without a label.
    """

    def __init__(
        self, fn: Callable[[int, int, np.ndarray], Label | None], end_label: Label = Label.FAILURE
    ):
        self.fn, self.end_label, self.episode = fn, Label(end_label), 0

    def begin(self, episode: int) -> None:
        self.episode = episode

    def poll(self, step: int, obs: np.ndarray) -> Label | None:
        out = self.fn(self.episode, step, obs)
        return None if out is None else Label(out)

    def at_end(self, timed_out: bool) -> Label:
        return self.end_label


def oracle_labeller(robot) -> ScriptedLabeller:
    """A scripted operator that labels success when a simulated robot reports it."""
    return ScriptedLabeller(lambda ep, step, obs: Label.SUCCESS if robot.success() else None)


class TerminalLabeller:
    """A person at the terminal: type s / f / a / x (then Enter) at any time during an
    episode for success / failure / abort / emergency stop. When an episode times out, asks
    for a label (Enter alone = failure) if ``ask_at_end``.

    A daemon thread reads stdin lines into a queue; ``poll`` never blocks the control loop.
    """

    def __init__(self, stream=None, ask_at_end: bool = True, out=None):
        self.stream = stream or sys.stdin
        self.out = out or sys.stdout
        self.ask_at_end = ask_at_end
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self._lines.put(line.strip().lower())
        self._lines.put("\x04")  # EOF

    def _parse(self, text: str) -> Label | None:
        if text == "\x04":
            return None
        label = KEYS.get(text[:1]) if text else None
        if text and label is None:
            print(
                f"  unknown label {text!r}: s=success f=failure a=abort x=e-stop",
                file=self.out,
                flush=True,
            )
        return label

    def begin(self, episode: int) -> None:
        while not self._lines.empty():  # drop keys typed between episodes
            self._lines.get_nowait()
        print(
            f"Episode {episode}: s=success f=failure a=abort x=EMERGENCY STOP (+Enter)",
            file=self.out,
            flush=True,
        )

    def poll(self, step: int, obs: np.ndarray) -> Label | None:
        while True:
            try:
                text = self._lines.get_nowait()
            except queue.Empty:
                return None
            label = self._parse(text)
            if label is not None:
                return label

    def at_end(self, timed_out: bool) -> Label:
        if not self.ask_at_end:
            return Label.FAILURE
        print(
            "Episode reached its step limit. Label it: [f]ailure (Enter) / [s]uccess / [a]bort",
            file=self.out,
            flush=True,
        )
        text = self._lines.get()
        if text in ("", "\x04"):
            return Label.FAILURE
        return self._parse(text) or Label.FAILURE
