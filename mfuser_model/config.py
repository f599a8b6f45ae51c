"""The model config: every number that shapes an MFuser network, loaded strictly from YAML presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from mfuser_model.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from mfuser_model.config_io import NonEmpty, NonNegInt, PosFloat, PosInt, Range, check_fields, load_dataclass
from mfuser_model.errors import ConfigError
from mfuser_model.resources import package_share_dirs, resolve_path

__all__ = ["BackboneWeights", "ModelConfig", "load_model_config", "preset_dirs", "preset_names", "resolve_preset"]


@dataclass(frozen=True)
class BackboneWeights:
    """Paths of the pretrained files a full-size model starts from (see ``mfuser_model.weights``).

    None of them is hard-coded: a preset names the keys, the user (or a YAML override) gives the paths.
    """

    vfm: str | None = None  # DINOv2 ViT-L/14: Meta .pth, timm or Hugging Face files
    vlm: str | None = None  # EVA02-CLIP / CLIP / SigLIP file holding the vision and text towers
    tokenizer: str | None = None  # SigLIP only: a local folder with the tokenizer files


_Channel = Annotated[int, Range(ge=0, le=255)]  # an 8-bit RGB component


@dataclass(frozen=True)
class ModelConfig:
    """An MFuser variant. Full-size values are the paper's; tiny presets shrink widths and depths only."""

    name: str
    vlm: Literal["eva02", "clip", "siglip"]
    depth: PosInt = 24
    vfm_dim: PosInt = 1024
    vfm_heads: PosInt = 16
    vlm_dim: PosInt = 1024
    vlm_heads: PosInt = 16
    patch_size: PosInt = 16  # 16 for the CLIP and SigLIP pairings (DINOv2 resized 14 -> 16), 14 for EVA02
    img_size: PosInt = 512  # size the position embeddings are stored for (training crop)
    out_indices: tuple[NonNegInt, NonNegInt, NonNegInt, NonNegInt] = (7, 11, 15, 23)
    text_dim: PosInt = 768  # joint image-text width: 768 CLIP/EVA02, 1024 SigLIP
    text_width: PosInt = 768
    text_heads: PosInt = 12
    text_layers: PosInt = 12
    text_vocab_size: PosInt = 49408
    text_context_length: PosInt = 77  # the tower's positional table; the prompt uses only the first T + P
    name_length: PosInt = 5  # T: class-name tokens incl. SOS/EOS
    num_context: NonNegInt = 5  # P: learnable context vectors (8 for EVA02)
    tokenizer: Literal["openai-clip-bpe", "siglip"] = "openai-clip-bpe"
    class_names: Annotated[tuple[str, ...], NonEmpty] = CITYSCAPES_CLASSES
    palette: tuple[tuple[_Channel, _Channel, _Channel], ...] = CITYSCAPES_PALETTE
    d_state: PosInt = 16
    context_width: PosInt = 256
    context_heads: PosInt = 4
    context_layers: PosInt = 1
    head_dim: PosInt = 256
    head_heads: PosInt = 8
    head_decoder_layers: PosInt = 9
    head_pixel_decoder_layers: PosInt = 6
    head_ffn_dim: PosInt = 2048
    temperature: PosFloat = 0.07
    vlm_drop_path: Annotated[float, Range(ge=0, lt=1)] = 0.0  # 0.1 for CLIP in the reference
    freeze_encoders: bool = True  # tiny presets trained from scratch may unfreeze them; the preset says so
    crop_size: PosInt = 512
    weights: BackboneWeights = field(default_factory=BackboneWeights)

    def __post_init__(self) -> None:
        check_fields(self)
        for dim, heads in (("vfm_dim", "vfm_heads"), ("vlm_dim", "vlm_heads"), ("text_width", "text_heads"),
                           ("context_width", "context_heads"), ("head_dim", "head_heads")):
            if getattr(self, dim) % getattr(self, heads):
                msg = f"{dim} ({getattr(self, dim)}) must be a multiple of {heads} ({getattr(self, heads)})"
                raise ConfigError(msg)
        if self.name_length + self.num_context > self.text_context_length:
            msg = (f"name_length + num_context ({self.name_length} + {self.num_context}) must fit "
                   f"text_context_length ({self.text_context_length})")
            raise ConfigError(msg)
        if len(self.class_names) > 255:
            msg = f"at most 255 classes fit a mono8 label image (255 = ignore), got {len(self.class_names)}"
            raise ConfigError(msg)
        if len(self.palette) != len(self.class_names):
            msg = f"palette has {len(self.palette)} colours for {len(self.class_names)} class names"
            raise ConfigError(msg)
        if self.vlm == "eva02" and self.patch_size != 14:
            msg = f"the EVA02 pairing uses patch size 14 (both encoders), got {self.patch_size}"
            raise ConfigError(msg)
        if any(not 0 <= i < self.depth for i in self.out_indices):
            msg = f"out_indices {list(self.out_indices)} must lie in [0, depth={self.depth})"
            raise ConfigError(msg)
        if self.vlm != "clip" and self.vfm_dim != self.vlm_dim:
            msg = f"vfm_dim ({self.vfm_dim}) must equal vlm_dim ({self.vlm_dim}) for the {self.vlm} pairing"
            raise ConfigError(msg)

    @property
    def num_classes(self) -> int:
        """K: one query and one score channel per class name."""
        return len(self.class_names)


def preset_dirs() -> list[Path]:
    """Where presets are looked up: ``config/presets`` of the checkout, then of each installed package share
    (colcon install prefix, ``AMENT_PREFIX_PATH``, ``sys.prefix``; see :mod:`mfuser_model.resources`)."""
    return [d / "config" / "presets" for d in package_share_dirs() if (d / "config" / "presets").is_dir()]


def preset_names() -> list[str]:
    """Names of every preset found."""
    return sorted({p.stem for d in preset_dirs() for p in d.glob("*.yaml")})


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (``tiny-eva02``), a YAML path or a ``package://`` URI -> the YAML path; unknown names list the
    valid ones."""
    path = resolve_path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            msg = f"{path}: model config not found"
            raise ConfigError(msg)
        return path
    for directory in preset_dirs():
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    msg = f"unknown model preset {str(name_or_path)!r}; valid presets: {', '.join(preset_names())}"
    raise ConfigError(msg)


def load_model_config(name_or_path: str | Path, overrides: dict | None = None) -> ModelConfig:
    """Load a preset by name or path, applying dotted overrides (``{"weights.vfm": "/data/dinov2.pth"}``)."""
    return load_dataclass(ModelConfig, resolve_preset(name_or_path), overrides)
