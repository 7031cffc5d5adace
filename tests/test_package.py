import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light_and_comfy_free():
    code = ("import sys, longtake; heavy = [m for m in ('torch', 'comfy', 'folder_paths', 'av') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy; assert isinstance(longtake.NODE_CLASS_MAPPINGS, dict)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_folder_loads_the_way_comfyui_loads_a_custom_node(tmp_path):
    """ComfyUI imports custom_nodes/<folder>/__init__.py under the folder's own name."""
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('LongTake_custom_node', r'{ROOT / '__init__.py'}', "
            f"submodule_search_locations=[r'{ROOT}']); "
            "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module); "
            "assert isinstance(module.NODE_CLASS_MAPPINGS, dict) and isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_longtake_command_is_installed():
    assert shutil.which("longtake"), "pip install . should put a `longtake` command on PATH"
    result = subprocess.run(["longtake", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "info" in result.stdout
