"""Prompt schedules: which prompt each chunk of the video follows, with blends at changes.

People write one entry a line, `SECONDS: PROMPT`:

    0: a red ball bouncing on a black background
    20: a red ball moving left on a black background

Blank lines and lines starting with `#` are skipped. A line without a time is the prompt from 0 s when it
is the only line, so a plain prompt is a valid schedule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LINE = re.compile(r"^\s*(?P<seconds>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*[:=]\s*(?P<prompt>.*?)\s*$")


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class PromptSchedule:
    entries: tuple[tuple[float, str], ...]   # (start seconds, prompt), sorted, the first at 0

    def __post_init__(self):
        if not self.entries:
            raise ScheduleError("the prompt schedule is empty: give at least one prompt")
        times = [t for t, _ in self.entries]
        if times[0] != 0:
            raise ScheduleError(f"the prompt schedule must start at 0 seconds, its first entry is at {times[0]:g}")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ScheduleError(f"the prompt schedule's times must increase: {', '.join(f'{t:g}' for t in times)}")

    @classmethod
    def single(cls, prompt: str) -> "PromptSchedule":
        return cls(((0.0, prompt),))

    @classmethod
    def parse(cls, text: str) -> "PromptSchedule":
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise ScheduleError("the prompt schedule is empty: write one `SECONDS: PROMPT` entry a line")
        if len(lines) == 1 and not LINE.match(lines[0][1]):
            return cls.single(lines[0][1].strip())
        entries = []
        for number, line in lines:
            match = LINE.match(line)
            if not match:
                raise ScheduleError(f"prompt schedule line {number}: {line.strip()!r} is not `SECONDS: PROMPT` "
                                    f"(for example `20: a blue square moving left on a white background`)")
            entries.append((float(match["seconds"]), match["prompt"]))
        if entries[0][0] != 0:
            raise ScheduleError(f"prompt schedule line {lines[0][0]}: the first entry must be at 0 seconds")
        for (number, _), (previous, _), (seconds, _) in zip(lines[1:], entries, entries[1:]):
            if seconds <= previous:
                raise ScheduleError(f"prompt schedule line {number}: {seconds:g} s does not come after {previous:g} s")
        return cls(tuple(entries))

    def weights(self, chunk: int, seconds_per_chunk: float, blend_chunks: int) -> list[tuple[str, float]]:
        """The prompts chunk `chunk` follows with their weights (summing to 1).

        A change at time `T` takes effect at the first chunk starting at or after `T`, then fades in
        linearly over `blend_chunks` chunks: the i-th of them has weight `(i + 1) / (blend_chunks + 1)`.
        """
        start = max(chunk, 0) * seconds_per_chunk
        current = max(i for i, (t, _) in enumerate(self.entries) if t <= start + 1e-9)
        if current == 0 or blend_chunks <= 0:
            return [(self.entries[current][1], 1.0)]
        first_chunk = _first_chunk_at(self.entries[current][0], seconds_per_chunk)
        progress = (chunk - first_chunk + 1) / (blend_chunks + 1)
        if progress >= 1:
            return [(self.entries[current][1], 1.0)]
        return [(self.entries[current - 1][1], 1.0 - progress), (self.entries[current][1], progress)]


def _first_chunk_at(seconds: float, seconds_per_chunk: float) -> int:
    return int(-(-round(seconds / seconds_per_chunk, 9) // 1))
