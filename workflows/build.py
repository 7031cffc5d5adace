"""Writes the example workflows, both forms, from the graphs below: `python workflows/build.py`.

Each graph is written once, as the API form plus a canvas position per node; the UI form (what you drag
onto the canvas) is derived from it with the nodes' own INPUT_TYPES, so the two cannot drift apart.
A test checks that the committed files are what this script writes.
"""
from __future__ import annotations

import json
from pathlib import Path

from longtake import __version__
from longtake.nodes.nodes import BUNDLED, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

HERE = Path(__file__).resolve().parent
START_IMAGE = "longtake_start.png"   # shipped beside the workflows; copy it into ComfyUI's input/

CORE_NODES = {  # the core nodes our workflows use: widgets in order (UI-only ones with their value), outputs
    "LoadImage": {"widgets": [("image", None), ("upload", "image")], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
}


def _pack(model="1", sampler=("progressive", 20, 4, 1, 1.0, 3.0, 0, 0.5, 1.0, 1.0), memory=("fresh", "")):
    """Load, Memory State and Sampler: the three nodes every workflow starts with."""
    return {
        "1": ((40, 60), "LongTakeLoadModel", {"checkpoint": BUNDLED, "device": "auto",
                                                "dtype": "float32", "compile": False}),
        "2": ((40, 260), "LongTakeMemoryState", {"model": [model, 0], "start_from": memory[0], "save_as": memory[1]}),
        "3": ((40, 440), "LongTakeProgressiveSampler", dict(zip(
            ("mode", "steps", "window_chunks", "overlap", "shift", "guidance", "seed", "memory_strength",
             "guidance_parallel", "recall_strength"), sampler))),
    }


def _loop_and_decode(prompts, seconds, prefix, start=None):
    loop = {"model": ["1", 0], "sampler": ["3", 0], "memory": ["2", 0], "prompts": prompts, "seconds": seconds,
            "fps": 24.0, "blend_seconds": 0.67}
    if start is not None:
        loop["start_frames"] = start
    return {
        "4": ((460, 60), "LongTakeSegmentLoop", loop),
        "5": ((900, 60), "LongTakeDecodeChunks", {"model": ["1", 0], "latents": ["4", 0], "save_mp4": True,
                                                  "filename_prefix": prefix, "crf": 18}),
    }


GRAPHS = {
    "minute_text_to_video": (
        "One prompt, one minute: Segment Loop makes 60 s with the demo model and Decode Chunks streams it into "
        "output/LongTake/minute_*.mp4.\nThe end is saved as the state 'minute', which the resume workflow continues.",
        {**_pack(memory=("fresh", "minute")),
         **_loop_and_decode("a red ball bouncing on a black background", 60.0, "LongTake/minute")}),
    "prompt_schedule": (
        "A one-minute story in three prompts: each 'SECONDS: prompt' line starts a new part, and the change fades "
        "in over blend_seconds.\nMemory carries the scene across the changes; the mp4 goes to output/LongTake/.",
        {**_pack(sampler=("progressive", 20, 4, 1, 1.0, 3.0, 7, 0.5, 1.0, 1.0)),
         **_loop_and_decode("0: a red ball bouncing on a black background\n"
                            "20: a red ball moving left on a black background\n"
                            "40: a red ball and a yellow square bouncing on a black background", 60.0,
                            "LongTake/story")}),
    "extend_video": (
        f"Continues a picture for 30 s: Load Image gives the start frames (copy workflows/{START_IMAGE} into "
        "ComfyUI's input/ folder, or pick your own).\nThe video goes on from it; any size is centre-cropped.",
        {**_pack(),
         "6": ((40, 700), "LoadImage", {"image": START_IMAGE}),
         **_loop_and_decode("a green ball moving right on a blue background", 30.0, "LongTake/extended",
                            start=["6", 0])}),
    "resume": (
        "Continues the video that minute_text_to_video saved as 'minute' for another 30 s, exactly where it ended, "
        "with its sampler settings.\nRun minute_text_to_video first; this run saves its own end as 'minute_more'.",
        {**_pack(memory=("minute.safetensors", "minute_more")),
         **_loop_and_decode("a red ball bouncing on a black background", 30.0, "LongTake/resumed")}),
}


def widget_names(node_type: str) -> list[str]:
    """The widgets of a node, in the order the UI stores their values."""
    if node_type in CORE_NODES:
        return [name for name, _ in CORE_NODES[node_type]["widgets"]]
    spec = NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    names = []
    for group in ("required", "optional"):
        for name, (kind, *options) in spec.get(group, {}).items():
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                names.append(name)
                if options and options[0].get("control_after_generate"):
                    names.append(f"{name}:control_after_generate")
    return names


def sockets(node_type: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(link inputs, outputs) of a node as (name, type) pairs."""
    if node_type in CORE_NODES:
        return [], CORE_NODES[node_type]["outputs"]
    cls = NODE_CLASS_MAPPINGS[node_type]
    spec = cls.INPUT_TYPES()
    inputs = [(name, kind) for group in ("required", "optional") for name, (kind, *_) in spec.get(group, {}).items()
              if isinstance(kind, str) and kind not in ("INT", "FLOAT", "STRING", "BOOLEAN")]
    return inputs, list(zip(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES), cls.RETURN_TYPES))


def api_form(graph: dict) -> dict:
    return {node_id: {"class_type": node_type, "inputs": inputs,
                      "_meta": {"title": NODE_DISPLAY_NAME_MAPPINGS.get(node_type, node_type)}}
            for node_id, (_, node_type, inputs) in graph.items()}


def ui_form(note: str, graph: dict) -> dict:
    nodes, links = [], []
    outputs_of: dict[tuple[str, int], list[int]] = {}
    for node_id, (_, node_type, inputs) in graph.items():
        for name, value in inputs.items():
            if isinstance(value, list):
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), name])
                outputs_of.setdefault((value[0], value[1]), []).append(len(links))
    for order, (node_id, ((x, y), node_type, inputs)) in enumerate(graph.items()):
        link_inputs, outputs = sockets(node_type)
        slots = []
        for name, kind in link_inputs:
            link = next((l[0] for l in links if l[3] == int(node_id) and l[4] == name), None)
            slots.append({"name": name, "type": kind, "link": link})
        values = []
        ui_only = dict(CORE_NODES.get(node_type, {}).get("widgets", []))
        for name in widget_names(node_type):
            base, _, control = name.partition(":")
            values.append("fixed" if control else inputs[base] if base in inputs else ui_only[base])
        properties = {"Node name for S&R": node_type}
        if node_type in NODE_CLASS_MAPPINGS:
            properties.update(cnr_id="longtake", ver=__version__)
        nodes.append({
            "id": int(node_id), "type": node_type, "pos": [x, y], "size": [380, 150 + 26 * len(values)],
            "flags": {}, "order": order, "mode": 0, "inputs": slots,
            "outputs": [{"name": name, "type": kind, "links": outputs_of.get((node_id, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(outputs)],
            "properties": properties, "widgets_values": values})
    note_id = max(int(i) for i in graph) + 1
    nodes.append({"id": note_id, "type": "Note", "pos": [460, 480], "size": [420, 120], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                  "widgets_values": [note]})
    slot_of = {}
    for node_id, (_, node_type, _) in graph.items():
        link_inputs, _ = sockets(node_type)
        for index, (name, _) in enumerate(link_inputs):
            slot_of[(int(node_id), name)] = index
    ui_links = [[lid, origin, slot, target, slot_of[(target, name)],
                 sockets(graph[str(origin)][1])[1][slot][1]] for lid, origin, slot, target, name in links]
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def rendered() -> dict[Path, str]:
    """Every workflow file's path and the text this script writes there."""
    files = {}
    for name, (note, graph) in GRAPHS.items():
        files[HERE / f"{name}.json"] = json.dumps(ui_form(note, graph), indent=2) + "\n"
        files[HERE / "api" / f"{name}.json"] = json.dumps(api_form(graph), indent=2) + "\n"
    return files


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
