"""ONNX export of the MFuser decode head (pixel decoder + text-query transformer decoder).

What is exported, and why:
- The graph is `MFuserHead` followed by the final-stage selection and `semantic_scores`; its inputs are the four
  pyramid maps (strides 4, 8, 16, 32) and the *refined* class text embeddings. The refinement
  (`text + gamma * MTEnhancer(text, visual)`) depends on the image, so the text is an input in general. It could be
  baked in as a constant only for a model whose text does not depend on the image: `gamma == 0` or a context decoder
  whose output is ignored. No shipped preset is like that, so this module does not bake it.
- Outputs: final `class_logits (B, K, K+1)`, final `mask_logits (B, K, h, w)` and `semantic_scores (B, K, h, w)`
  (h, w = the stride-4 map). The earlier stages feed the masked attention inside the graph but are not outputs.
- Spatial sizes are fixed at export: the deformable attention's level sizes and the sine positions are traced as
  constants. One ONNX file therefore serves one input size: the crop size for sliding-window inference (the node's
  and replay's `slide` mode), or one configured whole-image size. The batch may be fixed or dynamic.
- Multi-scale deformable attention is pure PyTorch (`F.grid_sample`), so it exports as ONNX `GridSample`
  (opset >= 16); opset 17 is the default. The legacy TorchScript exporter (`dynamo=False`) handles this head; the
  dynamo exporter is available as `exporter="dynamo"`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.fileio import atomic_path
from mfuser_model.network.decode_head import semantic_scores

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "DecoderInputs",
    "ExportedDecoder",
    "FinalStageDecoder",
    "capture_decoder_inputs",
    "decoder_input_shapes",
    "example_decoder_inputs",
    "export_decoder",
    "export_model_decoder",
    "head_fingerprint",
    "read_onnx_io",
    "whole_image_size",
]

DECODER_INPUTS = ("features_s4", "features_s8", "features_s16", "features_s32", "text")
DECODER_OUTPUTS = ("class_logits", "mask_logits", "semantic_scores")
DEFAULT_OPSET = 17
Exporter = Literal["legacy", "dynamo"]


class DecoderInputs(NamedTuple):
    """What the decode head reads: four `(B, C, H_i, W_i)` maps (strides 4..32) and `(B, K, text_dim)` text."""

    features: list[Tensor]
    text: Tensor


class ExportedDecoder(NamedTuple):
    """Result of an export: the file and the input shapes it was traced with (batch -1 when dynamic)."""

    path: Path
    input_shapes: dict[str, tuple[int, ...]]
    dynamic_batch: bool
    opset: int
    exporter: str


class FinalStageDecoder(nn.Module):
    """`MFuserHead` as a flat-signature module for export: five tensors in, final stage and scores out.

    Args:
        head: the decode head (not copied; put it in eval mode first).
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features_s4: Tensor, features_s8: Tensor, features_s16: Tensor, features_s32: Tensor,
                text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns final `class_logits (B, K, K+1)`, `mask_logits (B, K, h, w)` and `semantic_scores (B, K, h, w)`."""
        out = self.head([features_s4, features_s8, features_s16, features_s32], text)
        cls, mask = out.class_logits[-1], out.mask_logits[-1]
        return cls, mask, semantic_scores(cls, mask)


def decoder_input_shapes(*, in_channels: int, text_dim: int, num_classes: int, grid: tuple[int, int],
                         batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Shapes of the head's inputs for a token grid: the simple pyramid gives ×4, ×2, ×1, ×½ (floor) maps.

    Args:
        in_channels: channels of every pyramid map (VFM + VLM widths).
        text_dim: width of the text embeddings.
        num_classes: K.
        grid: the token grid `(h, w)` (image size // patch size), at least 2.
        batch: B.

    Returns:
        Input name -> shape, in `DECODER_INPUTS` order.
    """
    h, w = grid
    if h < 2 or w < 2:
        msg = f"token grid {grid} must be at least 2x2 (the pyramid halves it for stride 32)"
        raise ConfigError(msg)
    sizes = ((4 * h, 4 * w), (2 * h, 2 * w), (h, w), (h // 2, w // 2))
    shapes = {name: (batch, in_channels, *size) for name, size in zip(DECODER_INPUTS[:4], sizes, strict=True)}
    shapes["text"] = (batch, num_classes, text_dim)
    return shapes


def example_decoder_inputs(shapes: dict[str, tuple[int, ...]], *, seed: int = 0,
                           dtype: torch.dtype = torch.float32) -> DecoderInputs:
    """Standard-normal inputs of the given shapes (for tracing, parity checks and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shapes[name], generator=g, dtype=dtype) for name in DECODER_INPUTS]
    return DecoderInputs(tensors[:4], tensors[4])


@torch.no_grad()
def capture_decoder_inputs(model: nn.Module, images: Tensor) -> DecoderInputs:
    """Run a whole MFuser on `images` and return what its head received (features and refined text).

    Uses a forward pre-hook on `model.head`, so the inputs are exactly those of the real forward (pyramid maps,
    and text after the MTEnhancer).

    Args:
        model: an MFuser (anything whose forward calls `self.head(features, text)`).
        images: `(B, 3, H, W)` normalised images.

    Returns:
        The captured inputs, detached.
    """
    captured: list[DecoderInputs] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        features, text = args
        captured.append(DecoderInputs([f.detach() for f in features], text.detach()))

    handle = model.head.register_forward_pre_hook(hook)
    try:
        model(images)
    finally:
        handle.remove()
    if len(captured) != 1:
        msg = f"expected the model to call its head once, it called it {len(captured)} times"
        raise MFuserError(msg)
    return captured[0]


def head_fingerprint(head: nn.Module) -> str:
    """sha256 (hex, first 16) of the head's class, constructor-visible sizes and every tensor in its state dict.

    Names ONNX files in the export cache, so a changed weight never reuses a stale graph.
    """
    h = hashlib.sha256(type(head).__qualname__.encode())
    for key, value in head.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def export_decoder(head: nn.Module, path: str | Path, inputs: DecoderInputs | Sequence[Tensor], *,
                   dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, exporter: Exporter = "legacy",
                   check: bool = True) -> ExportedDecoder:
    """Export the decode head to ONNX (written atomically: temp file in the same folder, then `os.replace`).

    Args:
        head: an `MFuserHead` (a deep float32 CPU copy in eval mode is exported; `head` is left untouched).
        path: the `.onnx` file to write.
        inputs: example inputs fixing the spatial sizes (and the batch unless `dynamic_batch`).
        dynamic_batch: make axis 0 of every input and output symbolic (`batch`).
        opset: ONNX opset; >= 16 for GridSample.
        exporter: `"legacy"` (TorchScript tracer, `dynamo=False`) or `"dynamo"` (`torch.export`; opset >= 18).
        check: run `onnx.checker` on the result.

    Returns:
        The file and its traced input shapes.

    Raises:
        ConfigError: opset < 16, unknown exporter, wrong number of inputs.
        MFuserError: onnx missing, or the exporter failed (its message is kept).
    """
    if opset < 16:
        msg = f"opset={opset}: multi-scale deformable attention needs GridSample, i.e. opset >= 16 (use 17 or 18)"
        raise ConfigError(msg)
    if exporter not in ("legacy", "dynamo"):
        msg = f"exporter must be 'legacy' or 'dynamo', got {exporter!r}"
        raise ConfigError(msg)
    onnx = _require_onnx()
    if not isinstance(inputs, DecoderInputs):
        tensors = list(inputs)
        if len(tensors) != 5:
            msg = f"export_decoder: expected 5 input tensors {DECODER_INPUTS}, got {len(tensors)}"
            raise ConfigError(msg)
        inputs = DecoderInputs(tensors[:4], tensors[4])
    if len(inputs.features) != 4:
        msg = f"export_decoder: expected 4 feature maps (strides 4, 8, 16, 32), got {len(inputs.features)}"
        raise ConfigError(msg)
    args = tuple(t.detach().to("cpu", torch.float32) for t in (*inputs.features, inputs.text))
    module = FinalStageDecoder(copy.deepcopy(head).to("cpu", torch.float32).eval()).eval()
    path = Path(path)
    with atomic_path(path) as tmp:
        _run_exporter(module, args, tmp, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)
        model = onnx.load(tmp)
        shapes = {name: tuple(t.shape) for name, t in zip(DECODER_INPUTS, args, strict=True)}
        if dynamic_batch:
            shapes = {name: (-1, *s[1:]) for name, s in shapes.items()}
        meta = {
            "mfuser.decoder.inputs": json.dumps({k: list(v) for k, v in shapes.items()}),
            "mfuser.decoder.num_classes": str(args[4].shape[1]),
            "mfuser.decoder.head_sha256": head_fingerprint(head),
            "mfuser.decoder.exporter": exporter,
            "mfuser.decoder.torch": torch.__version__,
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        if check:
            onnx.checker.check_model(model)
        onnx.save(model, tmp)
    return ExportedDecoder(path, shapes, dynamic_batch, opset if exporter == "legacy" else max(opset, 18), exporter)


def _run_exporter(module: nn.Module, args: tuple[Tensor, ...], path: str, *, dynamic_batch: bool, opset: int,
                  exporter: Exporter) -> None:
    names = {"input_names": list(DECODER_INPUTS), "output_names": list(DECODER_OUTPUTS)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer warns about every Python int taken from a shape: those are the fixed spatial sizes
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                axes = {n: {0: "batch"} for n in (*DECODER_INPUTS, *DECODER_OUTPUTS)} if dynamic_batch else None
                torch.onnx.export(module, args, path, opset_version=opset, dynamo=False, dynamic_axes=axes,
                                  do_constant_folding=True, **names)
            else:
                shapes = None
                if dynamic_batch:
                    # torch.export specialises axes of size 1: trace with a batch of 2
                    args = tuple(a.expand(2, *a.shape[1:]).contiguous() if a.shape[0] == 1 else a for a in args)
                    batch = torch.export.Dim("batch", min=1, max=1024)
                    shapes = {n: {0: batch} for n in DECODER_INPUTS}
                # the dynamo exporter implements opset 18 and up; down-conversion of this graph fails
                program = torch.onnx.export(module, args, dynamo=True, opset_version=max(opset, 18),
                                            dynamic_shapes=shapes, optimize=True, verbose=False, **names)
                program.save(path)
    except Exception as err:
        # the exporters raise many unrelated types; keep the message and say which exporter failed
        msg = f"ONNX export of the decode head with the {exporter} exporter (opset {opset}) failed: {err}"
        if exporter == "legacy":
            msg += "; try exporter='dynamo'"
        raise MFuserError(msg) from err


def export_model_decoder(model: nn.Module, path: str | Path, *, image_size: int | tuple[int, int] | None = None,
                         batch: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                         exporter: Exporter = "legacy") -> ExportedDecoder:
    """Export the head of a whole MFuser for one input image size.

    The example inputs come from a real forward on a zero image of exactly `image_size`, so the map sizes are what
    the head sees for images of that size: `crop_size` for sliding windows, or, for whole images, the size after
    `Segmenter`'s padding to a multiple of 2 patches (see `whole_image_size`).

    Args:
        model: an MFuser (needs `.config.crop_size`, `.config.patch_size` and `.head`).
        path: the `.onnx` file.
        image_size: `S` or `(H, W)` of the images the model receives; default the model's crop size.
        batch: example batch (the fixed batch unless `dynamic_batch`).
        dynamic_batch: symbolic batch axis.
        opset: ONNX opset (>= 16).
        exporter: `"legacy"` or `"dynamo"`.

    Returns:
        The export result.
    """
    config = model.config
    size = image_size if image_size is not None else config.crop_size
    h, w = (size, size) if isinstance(size, int) else size
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        inputs = capture_decoder_inputs(model, torch.zeros(batch, 3, h, w, device=device))
    finally:
        model.train(was_training)
    return export_decoder(model.head, path, inputs, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)


def whole_image_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The size `Segmenter` in whole mode feeds the model for an image: padded up to a multiple of 2 patches."""
    multiple = 2 * patch_size
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def read_onnx_io(path: str | Path) -> tuple[dict[str, tuple[int | str, ...]], dict[str, tuple[int | str, ...]]]:
    """Input and output shapes of an ONNX file without loading its weights (symbolic dims as their names).

    Raises:
        MFuserError: the file is missing or not ONNX.
    """
    onnx = _require_onnx()
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: ONNX file not found"
        raise MFuserError(msg)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        msg = f"{path}: not a readable ONNX file ({err})"
        raise MFuserError(msg) from err

    def dims(value: object) -> tuple[int | str, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in value.type.tensor_type.shape.dim)

    initializers = {i.name for i in model.graph.initializer}
    inputs = {v.name: dims(v) for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: dims(v) for v in model.graph.output}
    return inputs, outputs


def _require_onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as err:
        msg = "ONNX export needs the 'onnx' package: pip install 'onnx==1.23.2' (or the project's 'export' extra)"
        raise MFuserError(msg) from err
    return onnx
