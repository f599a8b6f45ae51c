"""``mfuser-convert``: write one whole-model ``.safetensors`` file (frozen encoders included) from other weights.

Three inputs:

- a released MFuser checkpoint (the authors' mmseg ``.pth``)::

      mfuser-convert --release mfuser_eva_g2c.pth --preset mfuser-eva02-large -o mfuser-eva02-gtav.safetensors
      mfuser-convert --release mfuser_siglip_g2c.pth --preset mfuser-siglip-large \\
          --vlm siglip_vitl16_384.pth --tokenizer siglip-large-patch16-384/ -o mfuser-siglip-gtav.safetensors

- a preset plus the pretrained encoders, an untrained model to start training from::

      mfuser-convert --preset mfuser-clip-large --vfm dinov2_vitl14_pretrain.pth --vlm ViT-L-14-336px.pt \\
          -o init.safetensors

- a training checkpoint (trainable weights only) plus the encoders it was trained on::

      mfuser-convert --train-checkpoint runs/x/checkpoints/iter_20000.pt --preset mfuser-clip-large \\
          --vfm dinov2_vitl14_pretrain.pth --vlm ViT-L-14-336px.pt -o trained.safetensors

The output holds the preset name, class names and palette in its metadata (see :mod:`mfuser_model.checkpoint`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.resources import require_file
from mfuser_model.threads import add_threads_argument, apply_threads

# torch and the network load only past --help (seconds on a busy machine): imported in the functions using them.
if TYPE_CHECKING:
    from mfuser_model.config import ModelConfig
    from mfuser_model.network.mfuser import MFuser

__all__ = ["load_encoders", "main", "model_from_training_checkpoint"]

_log = logging.getLogger("mfuser-convert")


def load_encoders(model: MFuser, vfm: str | Path | None, vlm: str | Path | None) -> set[str]:
    """Load pretrained DINOv2 / VLM files into ``model`` (as training does); returns the state-dict keys filled.

    SigLIP's logit scale and bias come from its file too; CLIP-style models keep 1/0.07 (the reference).
    """
    import torch  # noqa: PLC0415

    from mfuser_model.weights.backbones import load_dinov2, load_vlm  # noqa: PLC0415

    filled: set[str] = set()
    if vfm is not None:
        load_dinov2(model.backbone.vfm, vfm)
        filled |= {f"backbone.vfm.{k}" for k in model.backbone.vfm.state_dict()}
    if vlm is not None:
        result = load_vlm(model.config.vlm, model.backbone.vlm, model.text_encoder.tower, vlm)
        filled |= {f"backbone.vlm.{k}" for k in model.backbone.vlm.state_dict()}
        filled |= {f"text_encoder.tower.{k}" for k in model.text_encoder.tower.state_dict()}
        with torch.no_grad():
            if model.config.vlm == "siglip" and result.logit_scale is not None:
                model.logit_scale.copy_(result.logit_scale.reshape(()))
                filled.add("logit_scale")
            if model.config.vlm == "siglip" and result.logit_bias is not None:
                model.logit_bias.copy_(result.logit_bias.reshape(()))
                filled.add("logit_bias")
    return filled


def model_from_training_checkpoint(path: str | Path, config: ModelConfig, vfm: str | Path | None,
                                   vlm: str | Path | None) -> MFuser:
    """An MFuser from a training checkpoint (trainable entries) plus the pretrained encoder files.

    Raises:
        CheckpointError: unreadable file, unknown keys, shapes that differ, or model entries that neither the
            checkpoint nor the encoder files provide (e.g. frozen encoders without ``--vfm`` / ``--vlm``).
    """
    from mfuser_model.checkpoint import load_state_dict_strict  # noqa: PLC0415
    from mfuser_model.network.mfuser import build_mfuser  # noqa: PLC0415
    from mfuser_model.weights.io import read_state_dict  # noqa: PLC0415

    state = read_state_dict(path)  # unwraps the checkpoint's "model" entry; weights_only, no code runs
    model = build_mfuser(config, token_ids=state.get("text_encoder.token_ids"))
    filled = load_encoders(model, vfm, vlm)
    load_state_dict_strict(model, state, f"{path} (preset {config.name!r}, with --vfm/--vlm)", may_be_missing=filled)
    return model


def _untrained(config: ModelConfig, vfm: str | Path | None, vlm: str | Path | None,
               tokenizer: str | Path | None) -> MFuser:
    if vfm is None or vlm is None:
        msg = "an untrained model needs both encoder files: --vfm (DINOv2) and --vlm (CLIP / EVA02 / SigLIP)"
        raise ConfigError(msg)
    from mfuser_model.network.mfuser import build_mfuser, tokenize_class_names  # noqa: PLC0415

    model = build_mfuser(config, token_ids=tokenize_class_names(config, tokenizer))
    load_encoders(model, vfm, vlm)
    return model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfuser-convert", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--release", type=Path, help="released MFuser checkpoint (.pth, mmseg format)")
    src.add_argument("--train-checkpoint", type=Path, help="training checkpoint of mfuser-train (trainable weights)")
    p.add_argument("--preset", required=True, help="model preset name or YAML path (e.g. mfuser-eva02-large)")
    p.add_argument("--vfm", type=Path, help="DINOv2 weights (Meta .pth, timm or Hugging Face files; releases: only "
                   "if the release lacks them)")
    p.add_argument("--vlm", type=Path, help="CLIP / EVA02-CLIP / SigLIP weights (releases: SigLIP's logit scale/bias, "
                   "or the VLM if the release lacks it)")
    p.add_argument("--tokenizer", type=Path, help="SigLIP only: folder with spiece.model or tokenizer.json")
    p.add_argument("-o", "--output", type=Path, required=True, help="whole-model .safetensors file to write")
    add_threads_argument(p)
    return p


def _check_inputs(args: argparse.Namespace) -> None:
    """Missing input files fail here, before torch and the network load."""
    for option in ("release", "train_checkpoint", "vfm", "vlm"):
        if getattr(args, option) is not None:
            require_file(getattr(args, option), f"--{option.replace('_', '-')}")
    if args.tokenizer is not None and not args.tokenizer.exists():
        msg = f"--tokenizer {args.tokenizer}: no such file or folder"
        raise ConfigError(msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        _check_inputs(args)
        apply_threads(args.threads)  # before torch loads
        from mfuser_model.checkpoint import save_model  # noqa: PLC0415
        from mfuser_model.config import load_model_config  # noqa: PLC0415
        from mfuser_model.weights.mfuser_release import model_from_release  # noqa: PLC0415

        config = load_model_config(args.preset)
        if args.release is not None:
            model = model_from_release(args.release, config, tokenizer_dir=args.tokenizer, vlm_file=args.vlm,
                                       vfm_file=args.vfm)
            source = {"source": "mfuser-release", "source_file": args.release.name}
        elif args.train_checkpoint is not None:
            model = model_from_training_checkpoint(args.train_checkpoint, config, args.vfm, args.vlm)
            source = {"source": "training-checkpoint", "source_file": args.train_checkpoint.name}
        else:
            model = _untrained(config, args.vfm, args.vlm, args.tokenizer)
            source = {"source": "pretrained-encoders"}
        out = save_model(model, args.output, extra_metadata=source)
    except (MFuserError, OSError) as err:
        print(f"mfuser-convert: {err}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in model.state_dict().values())
    print(f"mfuser-convert: wrote {out} ({model.config.name}, {model.config.num_classes} classes, {n:,} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
