"""The seams benchmark: its measures on frames whose answer is known, and the fast run end to end."""
import dataclasses
import json

import numpy as np
import torch

from helpers import randomise, small_model_config
from longtake.bench import seams
from longtake.cli import main as cli
from longtake.memory import LongTakeModel, save_checkpoint
from longtake.training.vocab import VOCAB


def dark_video(tints):
    """A still near-black video whose red level is `tints[i]` in frame i."""
    frames = np.full((len(tints), 16, 16, 3), 16, np.uint8)
    frames[..., 0] += np.asarray(tints, np.uint8)[:, None, None]
    return frames


def test_a_tint_that_steps_at_each_latent_reads_as_seams_and_the_same_change_spread_does_not():
    stepped = dark_video([4 * (i // 4) % 8 for i in range(48)])  # 0 0 0 0 4 4 4 4 0 ...: jumps where latents meet
    spread = dark_video([abs((i % 8) - 4) for i in range(48)])   # as far, a level a frame
    still = dark_video([0] * 48)
    assert seams.content_scores(still).max() == 0
    stepped_scores = seams.content_scores(stepped)
    assert seams.seam_ratio(stepped_scores, 4, 0) > 10  # all of its change at the seams
    assert 0.5 < seams.seam_ratio(seams.content_scores(spread), 4, 0) < 2
    assert seams.seam_ratio(stepped_scores, 4, 2) < 0.1  # seams elsewhere than where it steps: no steps there
    # On near-black a red step of 4 levels is a large change of saturation, as the cut detector sees it.
    assert seams.near_cuts(stepped_scores) >= 10 and seams.near_cuts(seams.content_scores(spread)) == 0


def test_content_scores_are_the_cut_detectors_own():
    from scenedetect.detectors import ContentDetector
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    frames[2:, :, :, 2] //= 3  # less blue from frame 2 on: a change whose hue depends on the channel order
    detector = ContentDetector()
    expected = [detector._calculate_frame_score(i, np.ascontiguousarray(f[:, :, ::-1])) for i, f in enumerate(frames)]
    assert np.allclose(seams.content_scores(frames), expected)


def test_fast_run_decodes_the_same_latents_with_each_decoder_and_refuses_another_latent_space(tmp_path, capsys):
    torch.manual_seed(0)
    config = small_model_config().replace(text=dataclasses.replace(small_model_config().text, vocab=VOCAB))
    model = randomise(LongTakeModel(config), scale=0.15).eval()
    save_checkpoint(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    assert cli(["bench", "seams", str(tmp_path / "tiny.safetensors"), "--decoder", str(tmp_path / "tiny.safetensors"),
                "--fast", "--out", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "decoder" not in line]
    assert len(rows) == 2 and rows[0].split(" | ")[1:] == rows[1].split(" | ")[1:]  # one decoder, twice: alike
    report = json.loads((out / "seams.json").read_text())
    own = report["decoders"]["own"]["videos"]
    assert len(own) == len(report["prompts"]) == 2 and all(v["seam_ratio"] > 0 for v in own)
    assert sorted(p.name for p in out.glob("*.mp4")) == ["decoder0-00.mp4", "decoder0-01.mp4",
                                                         "decoder1-00.mp4", "decoder1-01.mp4"]

    with torch.no_grad():  # another decoder of the same latents
        for weight in model.vae.decoder.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    save_checkpoint(model, tmp_path / "tuned.safetensors")
    assert cli(["bench", "seams", str(tmp_path / "tiny.safetensors"), "--decoder", str(tmp_path / "tuned.safetensors"),
                "--fast", "--out", str(tmp_path / "tuned")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "tuned" / "seams.json").read_text())
    own, tuned = (report["decoders"][name]["videos"] for name in report["decoders"])
    assert [v["seam_ratio"] for v in own] != [v["seam_ratio"] for v in tuned]  # each decoder decodes its own way

    model.vae.latent_std.mul_(2)  # the decoder of another latent space
    save_checkpoint(model, tmp_path / "other.safetensors")
    assert cli(["bench", "seams", str(tmp_path / "tiny.safetensors"), "--decoder", str(tmp_path / "other.safetensors"),
                "--fast", "--out", str(out)]) == 2
    assert "does not share" in capsys.readouterr().err
