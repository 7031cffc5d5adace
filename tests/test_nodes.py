"""The ComfyUI nodes and the example workflows, without ComfyUI: the nodes' contract, the node functions on
real tensors, and every shipped workflow checked against the nodes and run through them in-process."""
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import randomise, small_model_config
from longtake import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from longtake.memory import LongTakeModel, save_checkpoint
from longtake.nodes import comfy, nodes
from longtake.samplers import LongVideo, SamplerSettings
from longtake.samplers.loop import MAX_MEMORY_STRENGTH
from longtake.samplers.video import probe

ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = ["LongTakeLoadModel", "LongTakeMemoryState", "LongTakeProgressiveSampler", "LongTakeSegmentLoop",
            "LongTakeDecodeChunks"]
FAST = dict(mode="progressive", steps=4, window_chunks=2, overlap=1, shift=1.0, guidance=3.0, seed=0)
spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "workflows" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise(LongTakeModel(small_model_config("malt")), scale=0.15).eval()
    path = tmp_path_factory.mktemp("models") / "small.safetensors"
    save_checkpoint(model, path)
    return path


@pytest.fixture()
def comfy_env(checkpoint, tmp_path, monkeypatch):
    """The small model stands in for the bundled one; outputs go to a fresh folder."""
    monkeypatch.setattr(nodes, "_bundled_path", lambda: checkpoint)
    monkeypatch.setenv("LONGTAKE_OUTPUT", str(tmp_path / "output"))
    return tmp_path / "output"


def run(node_id, **inputs):
    cls = NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "VALIDATE_INPUTS"):
        names = cls.VALIDATE_INPUTS.__code__.co_varnames[1:cls.VALIDATE_INPUTS.__code__.co_argcount]
        optional = cls.INPUT_TYPES().get("optional", {})  # ComfyUI leaves out optional inputs it was not given
        verdict = cls.VALIDATE_INPUTS(**{k: inputs[k] for k in names if k in inputs or k not in optional})
        assert verdict is True, verdict
    result = getattr(cls(), cls.FUNCTION)(**inputs)
    return result["result"] if isinstance(result, dict) else result


def loaded(comfy_env):
    return run("LongTakeLoadModel", checkpoint=nodes.BUNDLED, device="cpu", dtype="float32")[0]


# ----- the contract ComfyUI reads -----

def test_the_five_node_ids_are_registered_with_display_names():
    assert sorted(NODE_CLASS_MAPPINGS) == sorted(NODE_IDS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_input_has_a_tooltip_and_every_number_a_range(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.DESCRIPTION and cls.CATEGORY.startswith("LongTake")
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    for group, inputs in cls.INPUT_TYPES().items():
        assert group in ("required", "optional")
        for name, (kind, *options) in inputs.items():
            assert options and options[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
            if kind in ("INT", "FLOAT"):
                assert {"min", "max", "step"} <= set(options[0]) or "control_after_generate" in options[0], name
                assert options[0]["min"] <= options[0]["default"] <= options[0]["max"]


def test_the_sampler_node_defaults_are_the_librarys():
    inputs = NODE_CLASS_MAPPINGS["LongTakeProgressiveSampler"].INPUT_TYPES()
    defaults = {name: options[0]["default"] for group in inputs.values() for name, (_, *options) in group.items()}
    library = asdict(SamplerSettings())
    assert defaults == {name: library[name] for name in defaults}
    assert inputs["optional"]["memory_strength"][1]["max"] == MAX_MEMORY_STRENGTH
    sampler = NODE_CLASS_MAPPINGS["LongTakeProgressiveSampler"]
    assert sampler().settings(**defaults)[0] == SamplerSettings()
    # A workflow written before the optional inputs: validated and run without them, at the library's defaults.
    del defaults["memory_strength"], defaults["guidance_parallel"], defaults["recall_strength"]
    assert sampler.VALIDATE_INPUTS(**defaults) is True
    assert sampler().settings(**defaults)[0] == SamplerSettings()
    assert "memory_strength is 3.0" in sampler.VALIDATE_INPUTS(**defaults, memory_strength=3.0)
    assert "guidance_parallel is 1.5" in sampler.VALIDATE_INPUTS(**defaults, guidance_parallel=1.5)
    assert "recall_strength is 3.0" in sampler.VALIDATE_INPUTS(**defaults, recall_strength=3.0)


def test_bad_values_get_messages_an_artist_understands(comfy_env, tmp_path):
    loop = NODE_CLASS_MAPPINGS["LongTakeSegmentLoop"]
    verdict = loop.VALIDATE_INPUTS("0: a red ball\nat twenty: a blue square", 60.0, 24.0)
    assert "line 2" in verdict
    assert "less than one frame" in loop.VALIDATE_INPUTS("a red ball", 0.5, 1.0)
    assert "between" in loop.VALIDATE_INPUTS("a red ball", 60.0, 500.0)
    sampler = NODE_CLASS_MAPPINGS["LongTakeProgressiveSampler"]
    verdict = sampler.VALIDATE_INPUTS("progressive", 10, 4, 1, 1.0, 3.0, 0)
    assert isinstance(verdict, str) and "10" in verdict
    stranger = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(stranger))
    loader = NODE_CLASS_MAPPINGS["LongTakeLoadModel"]
    original = comfy.model_path
    try:
        comfy.model_path = lambda name: stranger
        verdict = loader.VALIDATE_INPUTS("other.safetensors")
    finally:
        comfy.model_path = original
    assert isinstance(verdict, str) and "LongTake" in verdict
    state = NODE_CLASS_MAPPINGS["LongTakeMemoryState"]
    assert "inside" in state.VALIDATE_INPUTS("fresh", "../../escape")
    assert "not in" in state.VALIDATE_INPUTS("gone.safetensors", "")


# ----- the node functions on real tensors -----

def test_segment_loop_and_decode_make_the_requested_frames(comfy_env):
    model = loaded(comfy_env)
    sampler = run("LongTakeProgressiveSampler", **FAST)[0]
    memory = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="")[0]
    latent, end = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=memory,
                      prompts="a red ball bouncing on a black background", seconds=1.5, fps=12.0)
    assert latent["longtake"]["frames"] == 18 and latent["samples"].shape[2] == 3 * 2  # 3 chunks of 8 frames
    images, video = run("LongTakeDecodeChunks", model=model, latents=latent, save_mp4=False,
                        filename_prefix="x", crf=18)
    assert images.shape == (18, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    # The same frames as the library makes.
    reference = torch.cat(list(LongVideo(model.model, "a red ball bouncing on a black background", 1.5, 12,
                                         SamplerSettings(**FAST), resumable=True).frames()), dim=1)
    assert torch.allclose(images, reference.permute(1, 2, 3, 0).add(1).div(2), atol=1e-5)

    last, video = run("LongTakeDecodeChunks", model=model, latents=latent, save_mp4=True,
                      filename_prefix="LongTake/test", crf=18)
    assert probe(video.path) == (18, 12)
    assert video.path.parent == comfy_env / "LongTake" and last.shape == (1, 64, 64, 3)


def test_chained_segments_continue_one_video_without_a_seam(comfy_env):
    model = loaded(comfy_env)
    sampler = run("LongTakeProgressiveSampler", **FAST)[0]
    fresh = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="")[0]
    first, middle = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=fresh, prompts="a red ball",
                        seconds=2.0, fps=12.0)
    second, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=middle, prompts="a red ball",
                    seconds=2.0, fps=12.0)
    decoded = [run("LongTakeDecodeChunks", model=model, latents=lat, save_mp4=False, filename_prefix="x", crf=18)[0]
               for lat in (first, second)]
    whole, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=fresh, prompts="a red ball",
                   seconds=4.0, fps=12.0)
    assert torch.equal(torch.cat([first["samples"], second["samples"]], dim=2), whole["samples"])
    together = run("LongTakeDecodeChunks", model=model, latents=whole, save_mp4=False, filename_prefix="x", crf=18)[0]
    assert torch.allclose(torch.cat(decoded), together, atol=1e-4)


def test_cancel_keeps_what_was_made_and_saves_a_state_that_continues(comfy_env, monkeypatch):
    model = loaded(comfy_env)
    sampler = run("LongTakeProgressiveSampler", **FAST)[0]
    memory = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="cancelled")[0]
    calls = []
    monkeypatch.setattr(comfy, "interrupted", lambda: calls.append(1) or len(calls) > 9)
    latent, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=memory, prompts="a red ball",
                    seconds=4.0, fps=12.0)
    made = latent["longtake"]["frames"]
    assert 0 < made < 48
    assert (comfy_env / comfy.STATE_FOLDER / "cancelled.safetensors").exists()
    monkeypatch.setattr(comfy, "interrupted", lambda: False)
    assert "cancelled.safetensors" in NODE_CLASS_MAPPINGS["LongTakeMemoryState"].INPUT_TYPES()["required"]["start_from"][0]
    resumed = run("LongTakeMemoryState", model=model, start_from="cancelled.safetensors", save_as="")[0]
    rest, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=resumed, prompts="a red ball",
                  seconds=4.0 - made / 12, fps=12.0)
    fresh = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="")[0]
    whole, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=fresh, prompts="a red ball",
                   seconds=4.0, fps=12.0)
    assert torch.equal(torch.cat([latent["samples"], rest["samples"]], dim=2), whole["samples"])


def test_start_frames_of_any_size_are_cropped_and_continued(comfy_env):
    model = loaded(comfy_env)
    sampler = run("LongTakeProgressiveSampler", **FAST)[0]
    memory = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="")[0]
    image = torch.rand(3, 50, 90, 3)
    latent, _ = run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=memory, prompts="a red ball",
                    seconds=1.0, fps=12.0, start_frames=image)
    assert latent["longtake"]["context"] is not None and latent["longtake"]["frames"] == 12
    saved = run("LongTakeMemoryState", model=model, start_from="fresh", save_as="")[0]
    saved.state = LongVideo(model.model, "a red ball", 1, 12).state()
    with pytest.raises(ValueError, match="both start frames and a saved state"):
        run("LongTakeSegmentLoop", model=model, sampler=sampler, memory=saved, prompts="a red ball",
            seconds=1.0, fps=12.0, start_frames=image)


# ----- the shipped workflows -----

WORKFLOWS = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def test_the_four_example_workflows_are_shipped_as_built():
    assert WORKFLOWS == ["extend_video", "minute_text_to_video", "prompt_schedule", "resume"]
    for path, text in build.rendered().items():
        assert path.read_text() == text, f"{path} is stale: run python workflows/build.py"


def ui_graph(name):
    return json.loads((ROOT / "workflows" / f"{name}.json").read_text())


def api_graph(name):
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_matches_the_nodes_widgets(name):
    graph = ui_graph(name)
    assert graph["version"] == 0.4
    notes = [n for n in graph["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and notes[0]["widgets_values"][0].count("\n") == 1  # two lines
    for node in graph["nodes"]:
        if node["type"] == "Note":
            continue
        assert node["type"] in NODE_CLASS_MAPPINGS or node["type"] in build.CORE_NODES, node["type"]
        names = build.widget_names(node["type"])
        assert len(node["widgets_values"]) == len(names), node["type"]
        if node["type"] not in NODE_CLASS_MAPPINGS:
            continue
        assert node["properties"]["cnr_id"] == "longtake" and node["properties"]["ver"]
        spec = {**NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES()["required"],
                **NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES().get("optional", {})}
        for widget, value in zip(names, node["widgets_values"]):
            if widget.endswith(":control_after_generate"):
                assert value in ("fixed", "increment", "decrement", "randomize")
                continue
            kind, options = spec[widget][0], spec[widget][1]
            if isinstance(kind, list):
                assert value in kind or (widget == "start_from" and value.endswith(".safetensors")), (widget, value)
            else:
                assert isinstance(value, {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind])
                if kind in ("INT", "FLOAT"):
                    assert options["min"] <= value <= options["max"], (widget, value)
    for link_id, origin, slot, target, target_slot, kind in graph["links"]:
        source = next(n for n in graph["nodes"] if n["id"] == origin)
        sink = next(n for n in graph["nodes"] if n["id"] == target)
        assert source["outputs"][slot]["type"] == kind == sink["inputs"][target_slot]["type"]
        assert link_id in source["outputs"][slot]["links"] and sink["inputs"][target_slot]["link"] == link_id


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_and_api_forms_describe_the_same_graph(name):
    ui, api = ui_graph(name), api_graph(name)
    nodes_ui = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note"}
    assert set(nodes_ui) == set(api)
    for node_id, node in api.items():
        assert nodes_ui[node_id]["type"] == node["class_type"]
        widgets = [v for v in node["inputs"].values() if not isinstance(v, list)]
        ui_values = [v for w, v in zip(build.widget_names(node["class_type"]), nodes_ui[node_id]["widgets_values"])
                     if ":" not in w and w != "upload"]
        assert ui_values == widgets
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):
                slot = next(i for i in nodes_ui[node_id]["inputs"] if i["name"] == input_name)
                link = next(l for l in ui["links"] if l[0] == slot["link"])
                assert [str(link[1]), link[2]] == value


def execute(graph: dict) -> dict:
    """Run an API-format graph through our node functions, the way ComfyUI's executor does; the core
    LoadImage node at the edge is replaced by the image it would load."""
    done: dict[str, tuple] = {}

    def value(node_id):
        if node_id in done:
            return done[node_id]
        node = graph[node_id]
        inputs = {k: value(v[0])[v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        if node["class_type"] == "LoadImage":
            from PIL import Image
            pixels = np.asarray(Image.open(ROOT / "workflows" / inputs["image"]).convert("RGB"))
            done[node_id] = (torch.from_numpy(pixels.copy()).float()[None] / 255, None)
        else:
            done[node_id] = run(node["class_type"], **inputs)
        return done[node_id]

    for node_id in graph:
        value(node_id)
    return done


def test_api_workflows_run_in_process_and_write_their_mp4s(comfy_env):
    expected = {"minute_text_to_video": 1440, "prompt_schedule": 1440, "extend_video": 720, "resume": 720}
    for name in ["minute_text_to_video", "prompt_schedule", "extend_video", "resume"]:  # resume needs minute's state
        graph = api_graph(name)
        for node in graph.values():  # the small model's sampler settings, to keep CI quick
            if node["class_type"] == "LongTakeProgressiveSampler":
                node["inputs"].update(steps=4, window_chunks=2)
        outputs = execute(graph)
        decode = next(k for k, n in graph.items() if n["class_type"] == "LongTakeDecodeChunks")
        video = outputs[decode][1]
        assert probe(video.path) == (expected[name], 24), name
    assert (comfy_env / comfy.STATE_FOLDER / "minute_more.safetensors").exists()


def test_compile_runs_once_on_first_use_and_a_failure_names_the_switch(comfy_env, monkeypatch):
    calls = []
    monkeypatch.setattr(LongTakeModel, "compile_denoiser", lambda self: calls.append(self))
    model = run("LongTakeLoadModel", checkpoint=nodes.BUNDLED, device="cpu", dtype="float32", compile=True)[0]
    assert calls == []  # loading stays quick; the compile waits until the model is first used
    model.ready()
    model.ready()
    assert calls == [model.model]

    def broken(self):
        raise RuntimeError("torch.compile does not work here (no C++ compiler)")

    monkeypatch.setattr(LongTakeModel, "compile_denoiser", broken)
    model = run("LongTakeLoadModel", checkpoint=nodes.BUNDLED, device="cpu", dtype="float32", compile=True)[0]
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler\); set compile to false in Load Long Video Model"):
        model.ready()
