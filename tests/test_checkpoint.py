import json
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from helpers import randomise, small_model_config
from longtake.cli import main as cli
from longtake.memory import CheckpointError, LongTakeModel, load_checkpoint, read_config, save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise(LongTakeModel(small_model_config("malt")))
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path)
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == original[name].dtype
        assert torch.equal(tensor, original[name]), name
    assert set(original) == set(loaded.state_dict())


def test_tensor_names_carry_their_part(saved):
    _, path = saved
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    prefixes = {name.split(".")[0] for name in header if name != "__metadata__"}
    assert prefixes == {"vae", "text", "denoiser"}
    assert header["__metadata__"]["longtake_format"] == "2"
    assert json.loads(header["__metadata__"]["longtake_config"])["denoiser"]["memory"] == "malt"


@pytest.mark.parametrize("mode", ["none", "lstm"])
def test_every_memory_mode_round_trips(tmp_path, mode):
    model = randomise(LongTakeModel(small_model_config(mode)))
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config.denoiser.memory == mode
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "absent.safetensors", "no such file")


def test_not_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes, not a model\n" * 10)
    expect_error(path, "not a safetensors file")


def test_truncated(saved, tmp_path):
    _, good = saved
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:-1000])
    expect_error(path, "truncated")


def test_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, path, metadata={"format": "pt"})
    expect_error(path, "not a LongTake checkpoint")


def test_missing_tensors(saved, tmp_path):
    model, _ = saved
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith("denoiser.blocks.1.")}
    path = tmp_path / "missing.safetensors"
    save_file(tensors, path, metadata={"longtake_format": "1", "longtake_config": model.config.to_json()})
    expect_error(path, "missing tensors", "denoiser.blocks.1.")


def test_misshapen_tensors(saved, tmp_path):
    model, _ = saved
    tensors = dict(model.state_dict())
    tensors["denoiser.patch_in.weight"] = torch.zeros(7, 7)
    path = tmp_path / "misshapen.safetensors"
    save_file(tensors, path, metadata={"longtake_format": "1", "longtake_config": model.config.to_json()})
    expect_error(path, "wrong shape", "denoiser.patch_in.weight (7, 7)")


def test_a_format_1_file_with_separate_query_and_key_value_projections_loads_unchanged(saved, tmp_path):
    model, _ = saved
    tensors = {}
    for name, tensor in model.state_dict().items():
        if ".attn.qkv." in name:  # format 1 kept the query projection apart from the key-value one
            width = tensor.shape[0] // 3
            tensors[name.replace(".qkv.", ".q.")], tensors[name.replace(".qkv.", ".kv.")] = tensor[:width], tensor[width:]
        else:
            tensors[name] = tensor
    path = tmp_path / "format1.safetensors"
    save_file(tensors, path, metadata={"longtake_format": "1", "longtake_config": model.config.to_json()})
    loaded = load_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_future_format_version(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "future.safetensors"
    save_file(dict(model.state_dict()), path, metadata={"longtake_format": "99", "longtake_config": model.config.to_json()})
    expect_error(path, "version 99")


def test_read_config_does_not_need_the_tensors(saved):
    model, path = saved
    assert read_config(path) == model.config


def test_info_prints_config_and_parameter_counts(saved, capsys):
    model, path = saved
    assert cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    counts = model.parameter_counts()
    for part in ("vae", "text", "denoiser"):
        assert f"{counts[part]:,}" in out
    assert f"{sum(counts.values()):,}" in out
    assert '"memory": "malt"' in out


def test_info_on_a_bad_file_exits_nonzero_with_the_message(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 64)
    result = subprocess.run([sys.executable, "-m", "longtake", "info", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert str(path) in result.stderr and "not a safetensors file" in result.stderr
    assert "Traceback" not in result.stderr


def test_half_precision_storage_halves_the_file_and_loads_as_the_rounded_weights(saved, tmp_path):
    model, full = saved
    half = tmp_path / "half.safetensors"
    save_checkpoint(model, half, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    for name, tensor in model.state_dict().items():
        expected = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
