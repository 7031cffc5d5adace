"""LongTake inside a real ComfyUI, the way a user meets it. Skipped unless LONGTAKE_COMFYUI_DIR names a
ComfyUI checkout; LONGTAKE_COMFYUI_PYTHON names the Python that runs it (default: this one).

Starts `main.py --cpu` on a free loopback port with this folder linked into its custom_nodes/, then:
the log shows no import failure; /object_info lists the five nodes; every API workflow queued through
POST /prompt finishes and its mp4 has the expected frames; and, when Playwright and a Chromium are
installed, every UI workflow loads in ComfyUI's own frontend with no missing node and no rejected widget
value.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from longtake.samplers.video import probe

ROOT = Path(__file__).resolve().parents[1]
# Absolute, as ComfyUI runs in its own folder: the relative paths DEVELOPERS.md uses would point elsewhere.
COMFYUI = os.environ.get("LONGTAKE_COMFYUI_DIR") and str(Path(os.environ["LONGTAKE_COMFYUI_DIR"]).resolve())
COMFYUI_PYTHON = os.environ.get("LONGTAKE_COMFYUI_PYTHON", sys.executable)
if os.sep in COMFYUI_PYTHON:  # a path, not a command looked up on PATH; kept unresolved so a venv stays one
    COMFYUI_PYTHON = str(Path(COMFYUI_PYTHON).absolute())
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set LONGTAKE_COMFYUI_DIR to a ComfyUI checkout to run these")
NODE_IDS = {"LongTakeLoadModel", "LongTakeMemoryState", "LongTakeProgressiveSampler", "LongTakeSegmentLoop",
            "LongTakeDecodeChunks"}
EXPECTED_FRAMES = {"minute_text_to_video": 1440, "prompt_schedule": 1440, "extend_video": 720, "resume": 720}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui")
    link = Path(COMFYUI) / "custom_nodes" / "LongTake"
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(ROOT, target_is_directory=True)
    (base / "input").mkdir()
    shutil.copy(ROOT / "workflows" / "longtake_start.png", base / "input")
    port = free_port()
    log_path = base / "comfyui.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1",
             "--port", str(port), "--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
             "--disable-auto-launch"], cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                get(f"{url}/system_stats")
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"ComfyUI exited:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield url, base, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_pack_loads_without_import_errors(server):
    _, _, log = server
    ours = [line for line in log.read_text().splitlines() if "custom_nodes/LongTake" in line]
    assert any("seconds:" in line for line in ours), "ComfyUI did not import the pack at all"
    assert not [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line], ours


def test_object_info_lists_the_five_nodes(server):
    url, _, _ = server
    info = get(f"{url}/object_info")
    assert NODE_IDS <= set(info)
    assert info["LongTakeSegmentLoop"]["output"] == ["LATENT", "LONGTAKE_MEMORY"]
    assert "demo (bundled)" in info["LongTakeLoadModel"]["input"]["required"]["checkpoint"][0]


def queue(url, graph, timeout=900):
    request = urllib.request.Request(f"{url}/prompt", data=json.dumps({"prompt": graph}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        prompt_id = json.load(urllib.request.urlopen(request, timeout=30))["prompt_id"]
    except urllib.error.HTTPError as error:
        pytest.fail(f"ComfyUI refused the workflow: {error.read().decode()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = get(f"{url}/history/{prompt_id}")
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(1)
    pytest.fail(f"workflow still running after {timeout} s")


def test_every_api_workflow_makes_its_mp4(server):
    url, base, _ = server
    for name in ["minute_text_to_video", "prompt_schedule", "extend_video", "resume"]:  # resume continues minute
        graph = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
        result = queue(url, graph)
        assert result["status"]["status_str"] == "success", (name, result["status"])
        decode = next(k for k, n in graph.items() if n["class_type"] == "LongTakeDecodeChunks")
        saved = result["outputs"][decode]["images"][0]
        frames, fps = probe(base / "output" / saved["subfolder"] / saved["filename"])
        assert (frames, fps) == (EXPECTED_FRAMES[name], 24), name
    # A workflow written before the sampler's optional memory_strength input still runs.
    graph = json.loads((ROOT / "workflows" / "api" / "extend_video.json").read_text())
    sampler = next(n for n in graph.values() if n["class_type"] == "LongTakeProgressiveSampler")
    del sampler["inputs"]["memory_strength"]
    assert queue(url, graph)["status"]["status_str"] == "success"


def test_ui_workflows_load_in_the_real_frontend(server):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH")
    url, base, _ = server
    # resume.json starts from the state that minute_text_to_video saves: as a user would, run that one first
    # (when this test runs alone), or the frontend rightly marks the state's name as not there.
    if not any((base / "output").rglob("minute.safetensors")):
        graph = json.loads((ROOT / "workflows" / "api" / "minute_text_to_video.json").read_text())
        assert queue(url, graph)["status"]["status_str"] == "success"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        for path in sorted((ROOT / "workflows").glob("*.json")):
            problems = page.evaluate("""async (workflow) => {
                await window.app.loadGraphData(workflow);
                const problems = [];
                for (const node of window.app.graph._nodes) {
                    if (!(node.type in window.LiteGraph.registered_node_types)) problems.push(`missing ${node.type}`);
                    for (const widget of node.widgets || []) {
                        const values = widget.options && widget.options.values;
                        if (Array.isArray(values) && !values.includes(widget.value))
                            problems.push(`${node.type}.${widget.name} = ${widget.value}`);
                    }
                }
                return problems;
            }""", json.loads(path.read_text()))
            assert problems == [], (path.name, problems)
        browser.close()
