"""MFuser training: ``train(cfg)`` runs one config end to end (single process or under ``torchrun``).

Steps, top to bottom: setup (process group, seeds) -> model (preset + pretrained encoders, frozen parts) ->
resume (latest checkpoint in the run folder) -> optimizer / GradScaler -> data (source set, augmentation,
rare-class sampling, iteration-indexed sampler) -> loop (lr from the step, autocast forward, losses, NaN stop,
backward, step, logs, checkpoints, periodic evaluation) -> whole-model file and multi-target evaluation.

The run folder (``cfg.run_dir``) receives ``config.yaml`` (the merged config), ``git_revision.txt``,
``metrics.jsonl`` (one JSON object per logged iteration, each once across resumes: :mod:`training.run_folder`),
``tb/`` (TensorBoard, when installed), ``checkpoints/iter_*.pt`` (the last ``keep_checkpoints``),
``model.safetensors`` (the trained model as :func:`mfuser_model.checkpoint.save_model` writes it) and
``eval/<target>/`` reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from mfuser_model.checkpoint import save_model
from mfuser_model.config import ModelConfig, load_model_config
from mfuser_model.config_io import dataclass_to_dict
from mfuser_model.errors import CheckpointError, MFuserError
from mfuser_model.network.mfuser import MFuser, build_mfuser
from training.checkpointing import (
    capture_rng_state,
    checkpoint_path,
    frozen_fingerprint,
    latest_checkpoint,
    load_resume_checkpoint,
    load_trainable_state,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    trainable_state_dict,
)
from training.config import TrainConfig
from training.datasets import SegmentationDataset, Transform
from training.distributed import (
    DistContext,
    IterationBatchSampler,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    setup_distributed,
    teardown_distributed,
)
from training.evaluate import evaluate_targets, open_dataset
from training.losses import MFuserLoss
from training.optim import build_optimizer, set_lr
from training.rare_class_sampling import RareClassDataset, RareClassSampler
from training.run_folder import MetricsLog, remove_interrupted_writes
from training.transforms import TrainTransform

__all__ = ["ShuffledStream", "TrainResult", "TrainingError", "build_model", "build_source_stream", "seed_everything",
           "train"]

_log = logging.getLogger(__name__)


class TrainingError(MFuserError):
    """Training cannot go on (a non-finite loss, an unusable resume point); the message says where and why."""


@dataclass
class TrainResult:
    """What :func:`train` leaves behind (on every rank; files are written by rank 0)."""

    run_dir: Path
    iterations: int  # iterations completed in total (including those before a resume)
    losses: list[float] = field(default_factory=list)  # total loss of every iteration run by this call
    last_terms: dict[str, float] = field(default_factory=dict)
    model_path: Path | None = None
    eval: dict[str, float] = field(default_factory=dict)  # target name -> mIoU
    model: MFuser | None = None


# ---- setup -----------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"weights": {"vfm": p}}`` -> ``{"weights.vfm": p}`` so nested YAML and dotted keys both work."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _load_pretrained(model: MFuser, mcfg: ModelConfig) -> None:
    """Load the encoders' pretrained files named by the preset (``weights.vfm`` / ``weights.vlm``), if any."""
    from mfuser_model.weights import load_dinov2, load_vlm  # noqa: PLC0415

    if mcfg.weights.vfm:
        load_dinov2(model.backbone.vfm, mcfg.weights.vfm)
    if mcfg.weights.vlm:
        result = load_vlm(mcfg.vlm, model.backbone.vlm, model.text_encoder.tower, mcfg.weights.vlm)
        # SigLIP's scores use the checkpoint's calibration; CLIP-style models keep 1/tau (the reference).
        with torch.no_grad():
            if mcfg.vlm == "siglip" and result.logit_scale is not None:
                model.logit_scale.copy_(result.logit_scale.reshape(()))
            if mcfg.vlm == "siglip" and result.logit_bias is not None:
                model.logit_bias.copy_(result.logit_bias.reshape(()))


def build_model(cfg: TrainConfig) -> MFuser:
    """The MFuser of ``cfg.model`` with its pretrained encoders loaded (random init where none are named).

    Encoders are frozen as the preset says; full presets need ``weights.vfm`` / ``weights.vlm`` for a
    meaningful run (a warning says when they are missing).
    """
    mcfg = load_model_config(cfg.model.preset, _flatten(cfg.model.overrides))
    model = build_mfuser(mcfg)
    _load_pretrained(model, mcfg)
    if mcfg.freeze_encoders and not (mcfg.weights.vfm and mcfg.weights.vlm):
        _log.warning("preset %s freezes its encoders but no pretrained weights are set (weights.vfm/vlm): the "
                     "frozen encoders stay random", mcfg.name)
    model.backbone.grad_checkpointing = cfg.model.grad_checkpointing
    return model


class ShuffledStream(Dataset):
    """An endless, epoch-shuffled stream over ``dataset``: position ``p`` -> a transformed sample.

    Epoch ``e = p // N`` uses the permutation seeded by ``(seed, e)``; the transform's generator is seeded by
    ``(seed, p)``. So each position is a pure function of ``(seed, p)``: workers, ranks and resumes agree.
    """

    def __init__(self, dataset: SegmentationDataset, transform: Transform, seed: int = 0) -> None:
        if len(dataset) == 0:
            msg = f"{dataset}: empty dataset"
            raise ValueError(msg)
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def index_of(self, position: int) -> int:
        """The dataset index at stream ``position``."""
        epoch, offset = divmod(position, len(self.dataset))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        return int(self._perm[1][offset])

    def __getitem__(self, position: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, position])
        return self.transform(self.dataset.load(self.index_of(position)), rng)


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([s["image"] for s in samples]), "label": torch.stack([s["label"] for s in samples])}


def build_source_stream(cfg: TrainConfig, ctx: DistContext) -> Dataset:
    """The source training stream: augmentation plus rare-class sampling (or plain shuffling)."""
    d = cfg.data
    dataset = open_dataset(d.source, role="source", generate=d.generate_if_missing, ctx=ctx)
    transform = TrainTransform(d.crop_size, ratio_range=tuple(d.ratio_range), cat_max_ratio=d.cat_max_ratio,
                               flip_prob=d.flip_prob, photometric=d.photometric)
    if not d.rare_class.enabled:
        return ShuffledStream(dataset, transform, cfg.seed)
    rc = d.rare_class

    def make_sampler() -> RareClassSampler:
        return RareClassSampler(dataset, class_temp=rc.class_temp, min_pixels=rc.min_pixels, seed=cfg.seed,
                                cache_dir=rc.cache_dir)

    # Rank 0 computes and caches the class statistics; the others then read the cache.
    sampler = make_sampler() if ctx.is_main else None
    barrier(ctx)
    sampler = sampler or make_sampler()
    length = cfg.iterations * cfg.batch_size * ctx.world_size
    return RareClassDataset(dataset, transform, sampler, min_crop_ratio=rc.min_crop_ratio,
                            max_recrops=rc.max_recrops, length=length, seed=cfg.seed)


# ---- run-folder bookkeeping -------------------------------------------------------------------------------------
def git_revision() -> str:
    """``<sha>`` (``+dirty`` with local changes) of the checkout this package runs from, or ``unknown``."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


class _Loggers:
    """metrics.jsonl, TensorBoard (optional) and the tqdm bar, active on rank 0 only."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, start: int, resume: Path | None) -> None:
        self.active = ctx.is_main
        self.run_dir = cfg.run_dir
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.writer = None
        self.bar = None
        if not self.active:
            return
        self.metrics.begin(start, resume)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError as err:
                _log.warning("TensorBoard logging off (%s); install the 'train' extra to enable it", err)
            else:
                self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=start + 1)
        if cfg.progress_bar:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=cfg.iterations, initial=start, desc=cfg.name, dynamic_ncols=True)

    def step(self, values: dict[str, float], lr: float) -> None:
        if self.bar is not None:
            short = {k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items() if "." not in k}
            self.bar.set_postfix(short | {"lr": f"{lr:.2e}"}, refresh=False)
            self.bar.update(1)

    def log(self, row: dict[str, Any], prefix: str = "train") -> None:
        if not self.active:
            return
        self.metrics.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, row["iteration"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def _resume_path(cfg: TrainConfig, ckpt_dir: Path) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(ckpt_dir)
    return Path(cfg.resume)


# ---- the run -----------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, stop_at: int | None = None) -> TrainResult:
    """Run ``cfg``: train (resuming from the run folder's latest checkpoint by default), then write the model
    file and evaluate every target. Under ``torchrun`` each process calls this.

    Args:
        cfg: the run.
        stop_at: leave after this many iterations (counted from 0, not from the resume point) without writing
            the model file or evaluating, as a killed job would; the schedule still spans ``cfg.iterations``.
            For time-limited jobs and kill/resume tests.

    Raises:
        TrainingError: a non-finite loss (names the iteration and the terms).
        CheckpointError: the resume checkpoint does not fit the model.
        DatasetError / ConfigError: bad data folders or config values.
    """
    ctx = setup_distributed(cfg.device)
    try:
        return _train(cfg, ctx, stop_at)
    finally:
        teardown_distributed(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, stop_at: int | None) -> TrainResult:  # noqa: PLR0912
    device = ctx.device
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    if cfg.precision == "fp16" and device.type != "cuda":
        msg = "precision fp16 needs a CUDA device (GradScaler); use bf16 or fp32 on the CPU"
        raise TrainingError(msg)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # Model: identical initialisation on every rank (DDP also broadcasts rank 0's weights).
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    resume = _resume_path(cfg, ckpt_dir)
    if ctx.is_main:  # a job killed while writing left temporary files; nobody writes into these folders now
        remove_interrupted_writes(run_dir, ckpt_dir, resume)
    payload = load_resume_checkpoint(resume) if resume is not None else None
    start = 0
    if payload is not None:
        fingerprint = frozen_fingerprint(model)
        if not math.isclose(payload["frozen_fingerprint"], fingerprint, rel_tol=1e-9, abs_tol=1e-6):
            msg = (f"{resume}: frozen weights differ from those the checkpoint was trained with (checksum "
                   f"{payload['frozen_fingerprint']:.6g} vs {fingerprint:.6g}); check model.overrides weights paths")
            raise CheckpointError(msg)
        load_trainable_state(model, payload["model"], resume)
        start = int(payload["iteration"])
        if start > cfg.iterations:
            msg = f"{resume}: checkpoint is at iteration {start}, beyond iterations={cfg.iterations}"
            raise TrainingError(msg)
    if ctx.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the reference's SyncBN in the pyramid
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.find_unused_parameters)

    # Per-rank randomness (dropout, drop-path, point sampling) continues exactly where the checkpoint left it.
    rng_states = payload.get("rng", []) if payload is not None else []
    if ctx.rank < len(rng_states) and len(rng_states) == ctx.world_size:
        restore_rng_state(rng_states[ctx.rank])
    else:
        if payload is not None:
            _log.warning("%s: saved with %d processes, resuming with %d: RNG streams restart", resume,
                         len(rng_states), ctx.world_size)
        seed_everything(cfg.seed + 1 + 1000 * ctx.rank + start)

    stream = build_source_stream(cfg, ctx)
    loader = DataLoader(
        stream, batch_sampler=IterationBatchSampler(cfg.batch_size, start, cfg.iterations, ctx.rank, ctx.world_size),
        num_workers=cfg.data.num_workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        # Its own generator, so creating the loader leaves the global RNG (checkpointed) untouched.
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclass_to_dict(cfg), sort_keys=False),
                                             encoding="utf-8")
        (run_dir / "git_revision.txt").write_text(git_revision() + "\n", encoding="utf-8")
        if resume is not None:
            _log.info("resumed from %s at iteration %d", resume, start)

    def reduce_count(n: float) -> float:
        return float(all_reduce_mean(torch.tensor([n], dtype=torch.float64, device=device), ctx).item())

    criterion = MFuserLoss(model.config.num_classes, cfg.loss, reduce_count if ctx.distributed else None)
    loggers = _Loggers(cfg, ctx, start, resume if payload is not None else None)
    result = TrainResult(run_dir=run_dir, iterations=start, model=model)
    fingerprint = frozen_fingerprint(model)
    net.train()
    tick = time.perf_counter()
    try:
        batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
        end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
        for it in range(start, end):
            lr = set_lr(optimizer, it, cfg.iterations, cfg.optim)
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with _autocast(device, cfg.precision):
                out = net(images)
            terms = criterion(out.class_logits, out.mask_logits, out.score_map, labels)
            names = list(terms)
            values = all_reduce_mean(torch.stack([terms[k].detach().float() for k in names]), ctx).tolist()
            logged = dict(zip(names, values, strict=True))
            if not all(math.isfinite(v) for v in values):
                bad = {k: v for k, v in logged.items() if not math.isfinite(v)}
                msg = (f"non-finite loss at iteration {it + 1} (lr {lr:.3g}): {bad}; last checkpoint: "
                       f"{latest_checkpoint(ckpt_dir)}")
                raise TrainingError(msg)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()

            done = it + 1
            result.iterations = done
            result.losses.append(logged["loss"])
            result.last_terms = logged
            loggers.step(logged, lr)
            if done % cfg.log_interval == 0 or done == cfg.iterations:
                now = time.perf_counter()
                row = {"iteration": done, "lr": lr, **logged, "sec_per_iter": (now - tick) / cfg.log_interval}
                tick = now
                if device.type == "cuda":
                    row["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                loggers.log(row)
            if done % cfg.checkpoint_interval == 0 or done == cfg.iterations:
                _broadcast_buffers(model, ctx)
                rngs = all_gather_objects(capture_rng_state(), ctx)
                if ctx.is_main:
                    save_checkpoint(checkpoint_path(ckpt_dir, done), {
                        "iteration": done,
                        "model": trainable_state_dict(model),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rngs,
                        "sampler": {"kind": "iteration", "seed": cfg.seed, "world_size": ctx.world_size,
                                    "batch_size": cfg.batch_size, "next_iteration": done},
                        "frozen_fingerprint": fingerprint,
                        "config": dataclass_to_dict(cfg),
                    })
                    prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
                barrier(ctx)
            if cfg.eval.interval and done % cfg.eval.interval == 0 and done != cfg.iterations and cfg.eval.targets:
                state = capture_rng_state()  # evaluation must not shift the training RNG stream
                _evaluate(cfg, model, ctx, run_dir / "eval" / f"iter_{done:07d}", done, loggers)
                restore_rng_state(state)
                net.train()
        if loggers.bar is not None:
            loggers.bar.close()
        if result.iterations < cfg.iterations:  # stopped early (stop_at): leave like an interrupted job
            return result
        _broadcast_buffers(model, ctx)
        if ctx.is_main:
            result.model_path = save_model(model, run_dir / "model.safetensors", extra_metadata={
                "train_config": cfg.name, "iterations": str(result.iterations), "git_revision": git_revision()})
        barrier(ctx)
        if cfg.eval.targets:
            result.eval = _evaluate(cfg, model, ctx, run_dir / "eval", result.iterations, loggers)
    finally:
        loggers.close()
    return result


def _broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics on the CPU, where SyncBatchNorm is unavailable).

    DDP does the same at the start of every forward; doing it before a checkpoint or the final save makes the
    replicas identical at the moment they are written or compared.
    """
    if ctx.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)


def _evaluate(cfg: TrainConfig, model: MFuser, ctx: DistContext, out_dir: Path, iteration: int,
              loggers: _Loggers) -> dict[str, float]:
    results = evaluate_targets(model, cfg.eval.targets, cfg.eval, out_dir, ctx=ctx,
                               generate=cfg.data.generate_if_missing)
    mious = {name: r.miou for name, r in results.items()}
    loggers.log({"iteration": iteration, **{f"mIoU/{k}": v for k, v in mious.items()}}, prefix="eval")
    return mious
