"""`mfuser-export`: the decode head to ONNX, checked with onnxruntime, and optionally to a TensorRT engine.

Examples:
    mfuser-export --checkpoint model.safetensors --output decoder.onnx --verify
    mfuser-export --checkpoint model.safetensors --output decoder.onnx --dynamic-batch --tensorrt --precision fp16
    mfuser-export --onnx decoder.onnx --tensorrt --precision fp16 --max-batch 4 --build-only   # CI / first boot
    mfuser-export --checkpoint m.safetensors --output d.onnx --tensorrt --precision int8 --calib images/

Spatial sizes are fixed at export: `--mode slide` (default) exports for windows of the crop size, `--mode whole
--image-size H W` for whole images of one size (padded as `Segmenter` pads them). The TensorRT engine is cached next
to the ONNX file with a JSON sidecar and rebuilt only when the ONNX file, TensorRT version, GPU, precision or shapes
change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mfuser_model.errors import MFuserError
from mfuser_model.resources import require_file
from mfuser_model.threads import add_threads_argument, apply_threads

__all__ = ["build_parser", "main"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="mfuser-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="whole-model .safetensors file (mfuser_model.checkpoint)")
    src.add_argument("--preset", help="preset name: random weights (tests, plumbing checks)")
    src.add_argument("--onnx", help="an existing decoder ONNX file: skip the export (TensorRT build only)")
    p.add_argument("--output", help="the .onnx file to write (required with --checkpoint/--preset)")
    p.add_argument("--mode", choices=("slide", "whole"), default="slide",
                   help="slide: windows of the crop size (default); whole: images of --image-size")
    p.add_argument("--crop-size", type=int, help="window size for --mode slide (default: the model's crop size)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="image size for --mode whole")
    p.add_argument("--batch", type=int, default=1, help="fixed batch (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis instead of --batch")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 16 for GridSample (default 17)")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                   help="torch.onnx exporter: legacy TorchScript tracer (default) or dynamo")
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch on the export inputs")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--tensorrt", action="store_true", help="build (or reuse) a TensorRT engine from the ONNX file")
    trt.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default="fp16")
    trt.add_argument("--engine", help="engine path (default: <onnx stem>.<precision>.engine beside the ONNX file)")
    trt.add_argument("--max-batch", type=int, default=1, help="largest batch of a dynamic-batch ONNX file")
    trt.add_argument("--calib", help="int8 calibration: a folder of images (needs --checkpoint) or of .npz files, "
                                     "or one .npz, holding the decoder inputs")
    trt.add_argument("--calib-count", type=int, default=64, help="calibration samples used (default 64)")
    trt.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace limit (default 4096)")
    trt.add_argument("--force-rebuild", action="store_true", help="rebuild even if the cached engine matches")
    trt.add_argument("--build-only", action="store_true", help="build (or validate) the engine and exit, no warm-up")
    trt.add_argument("--warmup", type=int, default=10, help="warm-up runs after loading the engine (default 10)")
    p.add_argument("--device", default="cuda", help="CUDA device for TensorRT (default cuda)")
    add_threads_argument(p)
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.onnx is None and args.output is None:
        p.error("--output is required with --checkpoint or --preset")
    if args.onnx is not None and (args.output or args.verify):
        p.error("--onnx uses an existing file: --output and --verify need --checkpoint or --preset")
    if args.onnx is not None and not args.tensorrt:
        p.error("--onnx without --tensorrt has nothing to do")
    if args.build_only and not args.tensorrt:
        p.error("--build-only needs --tensorrt")
    if args.tensorrt and args.precision == "int8" and args.calib is None:
        p.error("--precision int8 needs --calib (a folder of images or .npz decoder inputs); without calibration "
                "data use --precision fp16 or fp32")
    if args.calib is not None and args.precision != "int8":
        p.error("--calib is only used with --precision int8")
    if args.mode == "whole" and args.image_size is None:
        p.error("--mode whole needs --image-size H W (the exported graph serves one size)")
    if args.mode == "slide" and args.image_size is not None:
        p.error("--image-size is for --mode whole; use --crop-size for --mode slide")
    for name in ("batch", "max_batch", "calib_count", "workspace_mib"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.opset < 16:
        p.error(f"--opset {args.opset}: multi-scale deformable attention needs GridSample (opset >= 16)")


def _image_size(model: object, args: argparse.Namespace) -> tuple[int, int]:
    from mfuser_model.deploy.onnx_export import whole_image_size  # noqa: PLC0415

    config = model.config
    if args.mode == "whole":
        return whole_image_size(args.image_size[0], args.image_size[1], config.patch_size)
    crop = args.crop_size or config.crop_size
    return crop, crop


def _calibration(args: argparse.Namespace, model: object, image_size: tuple[int, int]) -> object:
    """CalibrationData from .npz files, or from images run through the PyTorch model."""
    from mfuser_model.deploy.onnx_export import DECODER_INPUTS, capture_decoder_inputs  # noqa: PLC0415
    from mfuser_model.deploy.tensorrt_engine import CalibrationData  # noqa: PLC0415

    source = Path(args.calib)
    images = sorted(f for f in source.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES) if source.is_dir() else []
    if not images:
        return CalibrationData.from_npz(source, DECODER_INPUTS, limit=args.calib_count)
    if model is None:
        msg = f"--calib {source}: calibrating from images needs the model (--checkpoint), not --onnx"
        raise MFuserError(msg)
    import cv2  # noqa: PLC0415

    from mfuser_model.preprocess import normalize  # noqa: PLC0415

    parts: dict[str, list[np.ndarray]] = {n: [] for n in DECODER_INPUTS}
    for file in images[: args.calib_count]:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            msg = f"{file}: cannot read the calibration image"
            raise MFuserError(msg)
        # the decoder sees windows (or whole images) of exactly the exported size
        rgb = cv2.resize(bgr, (image_size[1], image_size[0]), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
        inputs = capture_decoder_inputs(model, normalize([np.ascontiguousarray(rgb)]))
        for name, t in zip(DECODER_INPUTS, (*inputs.features, inputs.text), strict=True):
            parts[name].append(t.float().cpu().numpy())
    return CalibrationData({n: np.concatenate(v) for n, v in parts.items()})


def _verify(model: object, onnx_path: Path, image_size: tuple[int, int], batch: int) -> str:
    import torch  # noqa: PLC0415

    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder, TorchDecoder  # noqa: PLC0415
    from mfuser_model.deploy.onnx_export import capture_decoder_inputs  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *image_size, generator=g)
    inputs = capture_decoder_inputs(model, images)
    tensors = [*inputs.features, inputs.text]
    with torch.no_grad():
        ref = TorchDecoder(model.head).eval().run(tensors)
    got = OnnxRuntimeDecoder(onnx_path).run(tensors)
    diff = [float((a - b).abs().max()) for a, b in zip(got, ref, strict=True)]
    agree = float((got[2].argmax(1) == ref[2].argmax(1)).float().mean())
    return (f"verify (onnxruntime vs torch, random image): max |diff| class_logits {diff[0]:.2e}, "
            f"mask_logits {diff[1]:.2e}, semantic_scores {diff[2]:.2e}; argmax agreement {agree * 100:.3f}%")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        if args.checkpoint is not None:
            require_file(args.checkpoint, "--checkpoint")  # before seconds of torch imports
        apply_threads(args.threads)  # before torch loads (see mfuser_model.threads)
        return _run(args)
    except MFuserError as err:  # ConfigError and CheckpointError included: the message names the culprit
        print(f"mfuser-export: error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    model = None
    image_size = None
    if args.tensorrt:
        # fail before a possibly long export when TensorRT cannot be used at all
        from mfuser_model.deploy.tensorrt_engine import require_tensorrt  # noqa: PLC0415

        require_tensorrt()
    if args.onnx is not None:
        onnx_path = Path(args.onnx)
        if not onnx_path.is_file():
            msg = f"{onnx_path}: ONNX file not found"
            raise MFuserError(msg)
    else:
        from mfuser_model.checkpoint import build_model  # noqa: PLC0415
        from mfuser_model.deploy.onnx_export import export_model_decoder  # noqa: PLC0415

        model = build_model(args.preset, checkpoint=args.checkpoint).eval()
        image_size = _image_size(model, args)
        info = export_model_decoder(model, args.output, image_size=image_size, batch=args.batch,
                                    dynamic_batch=args.dynamic_batch, opset=args.opset, exporter=args.exporter)
        onnx_path = info.path
        shapes = ", ".join(f"{k} {list(v)}" for k, v in info.input_shapes.items())
        weights = "random weights (preset)" if args.checkpoint is None else args.checkpoint
        print(f"exported {onnx_path} (opset {info.opset}, {info.exporter} exporter, {weights}, image "
              f"{image_size[0]}x{image_size[1]}): {shapes}")
        if args.verify:
            print(_verify(model, onnx_path, image_size, 1 if args.dynamic_batch else args.batch))
    if args.tensorrt:
        _tensorrt(args, onnx_path, model, image_size)
    return 0


def _tensorrt(args: argparse.Namespace, onnx_path: Path, model: object, image_size: tuple[int, int] | None) -> None:
    from mfuser_model.deploy.tensorrt_engine import TensorRTRunner, ensure_engine  # noqa: PLC0415

    calibration = None
    if args.precision == "int8":
        if image_size is None and model is not None:
            image_size = _image_size(model, args)
        calibration = _calibration(args, model, image_size or (0, 0))
    status = ensure_engine(onnx_path, precision=args.precision, engine_path=args.engine, max_batch=args.max_batch,
                           calibration=calibration, workspace_bytes=args.workspace_mib << 20, device=args.device,
                           force=args.force_rebuild)
    verb = f"built in {status.build_seconds:.1f} s" if status.rebuilt else "up to date"
    print(f"engine {status.engine_path}: {verb} ({status.reason})")
    if args.build_only:
        return
    runner = TensorRTRunner(status.engine_path, device=args.device)
    ms = runner.warmup(args.warmup)
    print(f"engine warm: {args.warmup} runs, last {ms:.2f} ms at the profile's opt shapes")


if __name__ == "__main__":
    sys.exit(main())
