"""The bundled demo model, what `longtake generate` and Load Long Video Model use when given no checkpoint:
small enough for the repository, carrying how it was made, and drawing the scene its prompt names."""
import re
from pathlib import Path

import pytest
import torch

from longtake.bench import quality
from longtake.cli import DEMO_MODEL
from longtake.memory import load_checkpoint
from longtake.samplers import LongVideo, SamplerSettings, render_mp4


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_MODEL)


def test_bundled_model_is_small_and_records_how_it_was_made(demo):
    assert DEMO_MODEL.stat().st_size <= 40e6
    record = demo.config.record
    assert {"steps", "data_seed", "final_loss", "seconds", "hardware"} <= set(record["denoiser"])
    for stage in record["lineage"]:
        assert stage["command"].startswith("longtake train") and stage["commit"] and stage["seconds"] > 0, stage
    # A model shipped without its own stage added to the lineage would credit its making to the one before.
    assert record["lineage"][-1]["command"] == record["command"]


def test_reproduce_script_replays_the_bundled_models_lineage(demo):
    """training/reproduce_demo.sh reruns the lineage stage by stage at each stage's commit: a model shipped
    without its stages added to the script would make the documented command reproduce the one before."""
    script = (Path(__file__).parent.parent / "training" / "reproduce_demo.sh").read_text()
    table = re.search(r"^STAGES=\((.*?)^\)", script, re.S | re.M).group(1)
    stages = [re.fullmatch(r'\s*"(\d+)\s+(\w+)\s+(ship|no)\s+(.+)"', line).groups()
              for line in table.strip().splitlines()]
    lineage = demo.config.record["lineage"]
    assert [int(number) for number, *_ in stages] == list(range(1, len(lineage) + 1))
    for (_, commit, _, command), stage in zip(stages, lineage):
        recorded = re.sub(r" \(.*\)$", "", stage["command"])  # a note added by hand, such as "(resumed from ...)"
        assert (commit, f"longtake {command}") == (stage["commit"], recorded)
    assert stages[-1][2] == "ship", "the last stage makes the bundled model: it must be shipped"


@pytest.mark.parametrize("prompt", ["a red ball bouncing on a black background",
                                    "a yellow square moving left on a blue background"])
def test_bundled_model_draws_the_colors_its_prompt_names(demo, tmp_path, prompt):
    """The first two seconds at the default settings: the named background is the dominant color, and the
    named object color covers at least the benchmark's share of the pixels, read back from the mp4."""
    path = tmp_path / "clip.mp4"
    with torch.no_grad():
        render_mp4(LongVideo(demo, prompt, seconds=2, fps=demo.config.fps, settings=SamplerSettings(seed=0)), path)
    checks = quality.checks_for(prompt)
    features = quality.features(quality.mp4_frames(path))
    whole = [slice(0, len(features.diff))]
    assert quality.background_by_clip(features, whole, checks.background) == [True]
    assert quality.colors_by_clip(features, whole, checks.object_colors) == {c: [True] for c in checks.object_colors}
