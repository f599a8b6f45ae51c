"""Training checkpoints: small, atomic, loadable with ``torch.load(weights_only=True)``, enough for exact resume.

A checkpoint holds the *trainable* part of the model (every state-dict entry except frozen parameters, which
come back from the pretrained files or the seed), the optimizer, the GradScaler, the iteration (which is also
the data sampler's position), every rank's RNG states (python, numpy, torch, CUDA) and the config. Only plain
types and tensors are stored, so loading never unpickles code. The whole model for deployment is written
separately with :func:`mfuser_model.checkpoint.save_model`.

Every checkpoint carries the SHA-256 of its payload (:func:`mfuser_model.fileio.tensor_digest`), checked on load:
torch's zip reader does not check its CRCs, so a flipped bit in a tensor would otherwise resume silently from
different weights. Checkpoints hold only the trainable part, so hashing costs a fraction of a second.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfuser_model.checkpoint import load_state_dict_strict
from mfuser_model.errors import CheckpointError
from mfuser_model.fileio import DIGEST_ALGORITHM, atomic_path, remove_stale_temp_files, tensor_digest

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "checkpoint_path",
    "frozen_fingerprint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_resume_checkpoint",
    "load_trainable_state",
    "prune_checkpoints",
    "remove_stale_checkpoint_temps",
    "restore_rng_state",
    "save_checkpoint",
    "trainable_state_dict",
]

CHECKPOINT_FORMAT = "mfuser-train/1"
_NAME = re.compile(r"^iter_(\d+)\.pt$")
_NAMES_GLOB = "iter_*.pt"
# What resuming reads from a checkpoint; the rest (rng, sampler, config) is optional.
_REQUIRED = {"iteration": int, "model": dict, "optimizer": dict, "scaler": dict, "frozen_fingerprint": float}
_SAFETENSORS = "safetensors"
_log = logging.getLogger(__name__)


def frozen_parameter_names(model: nn.Module) -> set[str]:
    """Names of parameters that do not train (left out of checkpoints)."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries of everything but frozen parameters (trainable weights, BN statistics, buffers)."""
    frozen = frozen_parameter_names(model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def frozen_fingerprint(model: nn.Module) -> float:
    """A float64 checksum of the frozen parameters, to catch resuming onto different pretrained weights."""
    total = 0.0
    for name, p in sorted(model.named_parameters()):
        if not p.requires_grad:
            total += float(p.detach().double().abs().sum()) + 1e-3 * len(name)
    return total


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load :func:`trainable_state_dict` output; frozen parameters keep their values.

    Raises:
        CheckpointError: keys missing (other than frozen parameters) or unexpected, or shapes differ.
    """
    load_state_dict_strict(model, state, source, may_be_missing=frozen_parameter_names(model))


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only`` safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: str | Path, iteration: int) -> Path:
    """``<folder>/iter_0001000.pt``: the checkpoint taken after ``iteration`` iterations."""
    return Path(folder) / f"iter_{iteration:07d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint in ``folder`` (None if there is none)."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints, and the temporary files of writes that were killed;
    returns the deleted paths."""
    found = list_checkpoints(folder)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed + remove_stale_checkpoint_temps(folder)


def remove_stale_checkpoint_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that checkpoint writes killed mid-way left in ``folder`` (logged)."""
    removed = remove_stale_temp_files(folder, _NAMES_GLOB)
    if removed:
        _log.info("%s: removed %d temporary file(s) of interrupted checkpoint writes", folder, len(removed))
    return removed


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: temp file in the same folder, then
    ``os.replace``, so a crash never leaves a truncated checkpoint under the final name."""
    path = Path(path)
    content = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save({**content, DIGEST_ALGORITHM: tensor_digest(content)}, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` and check its digest.

    Raises:
        CheckpointError: missing, unreadable, corrupt (digest mismatch), or not a training checkpoint (a whole-model
            ``.safetensors`` file, say); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: checkpoint not found"
        raise CheckpointError(msg)
    if _is_safetensors(path):
        msg = (f"{path}: a safetensors file, not a training checkpoint; resume takes a run's "
               f"checkpoints/iter_NNNNNNN.pt (model.safetensors is the finished model, for the node and mfuser-eval)")
        raise CheckpointError(msg)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds on a damaged file; each means the same here
        msg = f"{path}: cannot read checkpoint ({type(err).__name__}: {err})"
        raise CheckpointError(msg) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        msg = f"{path}: not an MFuser training checkpoint (format {fmt!r}, expected {CHECKPOINT_FORMAT!r})"
        raise CheckpointError(msg)
    stored = payload.pop(DIGEST_ALGORITHM, None)
    if stored is None:
        _log.warning("%s: written before checkpoints carried a digest; its contents are not verified", path)
    elif stored != (actual := tensor_digest(payload)):
        msg = (f"{path}: corrupt checkpoint: its contents do not match the {DIGEST_ALGORITHM} it was written with "
               f"({actual[:16]}... vs {str(stored)[:16]}...)")
        raise CheckpointError(msg)
    return payload


def load_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint`, checking that it holds everything a resume reads (iteration, model, optimizer,
    scaler, frozen-weights fingerprint); a CheckpointError names the file and the missing key."""
    payload = load_checkpoint(path)
    for key, kind in _REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            msg = f"{path}: checkpoint key {key!r} is missing or not a {kind.__name__}"
            raise CheckpointError(msg)
    return payload


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == f".{_SAFETENSORS}":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size
