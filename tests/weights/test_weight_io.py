"""Weight files are read without running code from them; broken or unsafe files fail with the file and the reason."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mfuser_model.errors import CheckpointError
from mfuser_model.weights import load_into, read_state_dict, read_torchscript_tensors

# torch.jit.script/save are deprecated but still how TorchScript archives like OpenAI's are made.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:'torch.load' received a zip file")


class _RunsShell:
    """Pickles as a call to os.system; the tests only ever *write* it, and check that loading never runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Holder(nn.Module):
    """A TorchScript-able module with a half Linear, an int buffer, a transposed view and an offset view."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3).half()
        base = torch.arange(12, dtype=torch.float32)
        self.register_buffer("steps", torch.arange(5))
        self.register_buffer("transposed", torch.randn(3, 4).t())
        self.register_buffer("offset_view", base[2:8])
        self.sizes = [3, 4]  # containers (types inferred by TorchScript) are pickled with type tags
        self.names = {"scale": 0.5}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset_view.sum()


def _torchscript(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    module = _Holder()
    torch.jit.save(torch.jit.script(module), str(path))
    return path, module.state_dict()


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _rewrite_zip(path: Path, out: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            suffix = name.split("/", 1)[1]
            dst.writestr(name, replace.get(suffix, src.read(name)))
    return out


# ---------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("wrap", "name"),
    [
        (lambda sd: sd, "plain.safetensors"),
        (lambda sd: sd, "plain.pth"),
        (lambda sd: {"state_dict": sd, "meta": {"epoch": 3}}, "mmseg.pth"),
        (lambda sd: {"model": sd, "epoch": 3}, "deit.pth"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "dataparallel.bin"),
    ],
)
def test_state_dicts_are_unwrapped_to_plain_tensors(tmp_path, wrap, name):
    state = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(wrap(state), str(path))
    else:
        torch.save(wrap(state), path)

    loaded = read_state_dict(path)

    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value)


def test_torchscript_archive_is_read_without_loading_its_code(tmp_path):
    path, expected = _torchscript(tmp_path / "ViT-L-14-336px.pt")

    loaded = read_state_dict(path)

    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value), key


def test_torch_load_refuses_torchscript_with_weights_only_so_the_own_reader_is_needed(tmp_path):
    path, _ = _torchscript(tmp_path / "scripted.pt")
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------------------------------- broken files


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        read_state_dict(tmp_path / "nowhere.pth")


def test_truncated_safetensors_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    with pytest.raises(CheckpointError, match=r"model\.safetensors as safetensors \(truncated or corrupt"):
        read_state_dict(_truncate(path))


def test_truncated_torch_zip_is_named(tmp_path):
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    with pytest.raises(CheckpointError, match=r"dinov2_vitl14_pretrain\.pth: a truncated or corrupt zip archive"):
        read_state_dict(_truncate(path))


def test_truncated_torchscript_is_named(tmp_path):
    path, _ = _torchscript(tmp_path / "ViT-L-14-336px.pt")
    with pytest.raises(CheckpointError, match=r"ViT-L-14-336px\.pt: a truncated or corrupt zip archive"):
        read_state_dict(_truncate(path))


def test_torchscript_storage_shorter_than_its_tensors_is_named(tmp_path):
    path, _ = _torchscript(tmp_path / "good.pt")
    bad = _rewrite_zip(path, tmp_path / "short_storage.pt", {"data/0": b"\x00\x00"})
    with pytest.raises(CheckpointError, match=r"short_storage\.pt: storage .*data/0 holds 2 bytes, expected"):
        read_torchscript_tensors(bad)


def test_non_tensor_payload_is_named(tmp_path):
    path = tmp_path / "optimizer_only.pth"
    torch.save({"lr": 0.1, "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"optimizer_only\.pth holds no plain tensor dict.*'lr' \(float\)"):
        read_state_dict(path)


# ---------------------------------------------------------------------------------------------------- code in pickles


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": _RunsShell(marker)}, path)

    with pytest.raises(CheckpointError, match=r"Refusing to load .*evil\.pth: it needs arbitrary unpickling.*system"):
        read_state_dict(path)
    assert not marker.exists()


def test_torchscript_with_code_in_its_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path, _ = _torchscript(tmp_path / "good.pt")
    evil = pickle.dumps(_RunsShell(marker), protocol=2)
    bad = _rewrite_zip(path, tmp_path / "evil_script.pt", {"data.pkl": evil})

    with pytest.raises(CheckpointError, match=r"evil_script\.pt: its data\.pkl references (posix|os)\.system"):
        read_state_dict(bad)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- load_into


def test_load_into_names_unexpected_keys_unless_not_strict():
    module = nn.Linear(3, 2)
    state = dict(module.state_dict(), extra=torch.zeros(1))
    with pytest.raises(CheckpointError, match=r"Weights from w\.pt do not fit Linear: unexpected keys \[extra\]"):
        load_into(module, state, source="w.pt")
    report = load_into(module, state, source="w.pt", strict=False)
    assert report.unexpected == ("extra",)
    assert set(report.loaded) == {"weight", "bias"}


def test_load_into_copies_values_and_casts_to_the_module_dtype():
    module = nn.Linear(3, 2)
    weight = torch.randn(2, 3).half()
    load_into(module, {"weight": weight, "bias": torch.zeros(2)}, source="half.pt")
    assert module.weight.dtype == torch.float32
    assert torch.equal(module.weight.detach(), weight.float())
