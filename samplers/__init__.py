"""Sampling, pure torch: the flow-matching schedule, progressive (PA-VDM) and replacement (RW/RN) window
samplers, prompt schedules, and the streaming long-video loop."""
from .loop import MODES, Cancelled, LongVideo, Progress, SamplerSettings, render_mp4
from .prompts import PromptSchedule, ScheduleError
from .schedule import euler_step, stage_table, time_grid, warp

__all__ = ["MODES", "Cancelled", "LongVideo", "Progress", "PromptSchedule", "SamplerSettings", "ScheduleError",
           "euler_step", "render_mp4", "stage_table", "time_grid", "warp"]
