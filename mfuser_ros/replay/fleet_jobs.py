"""The bags of a fleet job and the work on one bag (no Ray here: a Ray worker calls :func:`replay_bag`).

Bags come from paths, globs and list files (one bag per line, ``#`` comments, paths relative to the list file).
Each bag gets its own folder ``<out>/bags/<stem>-<hash>`` (the hash of its absolute path keeps two ``drive.mcap``
from different days apart, and stays the same when the job is run again), where the single-bag runner writes its
output bag and report and :func:`replay_bag` writes ``fleet_result.json`` last. That file makes the bag complete: a
resumed job skips it, provided it was made with the same settings (checkpoint digest, node and replay options).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfuser_model.errors import MFuserError
from mfuser_ros.replay.fleet_report import (
    BAG_RESULT_FILE,
    BagRecord,
    bag_record_from_result,
    failed_record,
    read_bag_record,
    write_bag_record,
)
from mfuser_ros.replay.options import ReplayOptions

if TYPE_CHECKING:  # the runner and the model (torch) load in the workers, not for mfuser-replay-fleet --help
    from mfuser_ros.node.model_loader import LoadedModel

__all__ = ["BagJob", "FleetError", "expand_bags", "find_complete", "plan_jobs", "replay_bag", "settings_fingerprint"]

BAG_SUFFIXES = (".mcap", ".db3", ".bag")
# Node fields that change how fast a replay runs, or what it logs, but not its outputs: a job resumed with other
# values of these still matches.
RUNTIME_ONLY_FIELDS = ("device", "load_model_on", "warmup", "autostart", "diagnostics_period_s", "stats_window_s",
                       "latency_warn_ms", "latency_error_ms", "min_output_fps_warn", "log_throttle_s",
                       "decoder_cache_dir", "threads")


class FleetError(MFuserError):
    """The job cannot start: no bags, a missing bag, results made with other settings. Names the bag or file."""


@dataclass(frozen=True)
class BagJob:
    """One bag of the job and the folder its results go to."""

    bag: Path
    bag_id: str
    out_dir: Path

    @property
    def result_path(self) -> Path:
        """``fleet_result.json``: present once the bag is complete."""
        return self.out_dir / BAG_RESULT_FILE


def _is_bag(path: Path) -> bool:
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or (path.is_file() and path.suffix in BAG_SUFFIXES)


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        msg = f"--bag-list {path}: cannot read it: {err}"
        raise FleetError(msg) from err
    out = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(entry if os.path.isabs(entry) else str(path.parent / entry))
    return out


def expand_bags(specs: Sequence[str], bag_lists: Sequence[Path] = ()) -> list[Path]:
    """Bags named by paths, globs (``**`` recurses) and list files, in the order given, each once.

    A glob keeps only what looks like a bag (a rosbag2 folder with metadata.yaml, or a .mcap / .db3 / .bag file).

    Raises:
        FleetError: a path does not exist, a glob or list matches nothing, or no bag at all is named.
    """
    entries = list(specs)
    for list_file in bag_lists:
        listed = _read_list(Path(list_file))
        if not listed:
            msg = f"--bag-list {list_file}: names no bag"
            raise FleetError(msg)
        entries += listed
    bags: list[Path] = []
    seen: set[str] = set()
    for entry in entries:
        if glob.has_magic(entry):
            matches = [Path(m) for m in sorted(glob.glob(entry, recursive=True)) if _is_bag(Path(m))]
            if not matches:
                msg = f"{entry}: the pattern matches no bag (rosbag2 folder, .mcap, .db3 or .bag)"
                raise FleetError(msg)
        else:
            if not Path(entry).exists():
                msg = f"{entry}: no such bag"
                raise FleetError(msg)
            matches = [Path(entry)]
        for m in matches:
            key = os.path.abspath(m)
            if key not in seen:
                seen.add(key)
                bags.append(m)
    if not bags:
        msg = "no bags given: name bags, globs or --bag-list files"
        raise FleetError(msg)
    return bags


def bag_id(bag: Path) -> str:
    """``<stem>-<8 hex of the absolute path>``: readable, unique in the job, the same on every run."""
    digest = hashlib.sha1(os.path.abspath(bag).encode("utf-8")).hexdigest()[:8]
    stem = Path(os.path.abspath(bag)).stem or "bag"
    return f"{stem}-{digest}"


def plan_jobs(bags: Sequence[Path], out: Path) -> list[BagJob]:
    """One job per bag, with its folder under ``out/bags``."""
    return [BagJob(bag, bag_id(bag), out / "bags" / bag_id(bag)) for bag in bags]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except OSError as err:
        msg = f"{path}: cannot read the checkpoint: {err}"
        raise FleetError(msg) from err
    return h.hexdigest()


def settings_fingerprint(options: ReplayOptions) -> tuple[str, dict[str, Any]]:
    """(16-hex digest, the settings it covers): what decides a bag's outputs, the same for every bag of the job.

    Covers the checkpoint's content (sha256), the node options that change outputs, and the replay options.
    """
    node = {k: v for k, v in asdict(options.node).items() if k not in RUNTIME_ONLY_FIELDS}
    node.pop("image_topics", None)  # the runner sets them per bag
    node.pop("camera_names", None)
    if options.node.checkpoint:
        node["checkpoint"] = {"name": Path(options.node.checkpoint).name,
                              "sha256": _file_digest(options.node.checkpoint)}
    replay = {"topics": list(options.topics), "gt_topics": dict(sorted(options.gt_topics.items())),
              "gt_dir": str(options.gt_dir) if options.gt_dir else None, "gt_key": options.gt_key,
              "gt_format": options.gt_format, "miou_rule": options.miou_rule, "storage": options.storage,
              "realtime": options.realtime,
              "rate": options.rate, "outputs": list(options.outputs), "montage_rows": options.montage_rows,
              "max_frames": options.max_frames}
    settings = {"node": node, "replay": replay}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], settings


def find_complete(jobs: Sequence[BagJob], fingerprint: str, redo: bool = False,
                  warn: Callable[[str], None] = print) -> dict[str, BagRecord]:
    """bag_id -> the complete result an earlier run left, for bags a resumed job skips.

    A record that cannot be read is ignored (the bag runs again, with a warning). With ``redo`` nothing is taken.

    Raises:
        FleetError: a complete result was made with other settings (mixing them would merge unlike numbers).
    """
    if redo:
        return {}
    done: dict[str, BagRecord] = {}
    for job in jobs:
        if not job.result_path.is_file():
            continue
        try:
            record = read_bag_record(job.result_path)
        except MFuserError as err:
            warn(f"mfuser-replay-fleet: warning: {err}; replaying {job.bag} again")
            continue
        if record.fingerprint != fingerprint:
            msg = (f"{job.result_path}: made with other settings (fingerprint {record.fingerprint}, this job "
                   f"{fingerprint}); use another --out, or --redo to replay every bag again")
            raise FleetError(msg)
        record.resumed = True
        done[job.bag_id] = record
    return done


def replay_bag(job: BagJob, base: ReplayOptions, loaded: LoadedModel, fingerprint: str, out_root: Path,
               attempt: int = 1, worst: int = 10, worker: dict[str, Any] | None = None,
               on_frame: Callable[[BagJob, int, int], None] | None = None) -> tuple[BagRecord, bool]:
    """Replay one bag with the already loaded model, write its complete result; returns (record, retryable).

    The bag's folder is emptied first: the driver hands out only bags without a complete result (or all, with
    ``--redo``), so it holds what an earlier attempt left, e.g. a half-written output bag the runner would refuse to
    overwrite. Errors become a ``failed`` record instead of an exception: an :class:`MFuserError` (bad bag, bad
    topic) is the input's fault and not worth retrying; anything else (an I/O error, CUDA out of memory) may pass,
    so it is retryable.

    Args:
        on_frame: called with (job, attempt, frames read) after each frame (tests inject faults here).
    """
    if job.out_dir.exists():
        shutil.rmtree(job.out_dir)
    options = replace(base, bag=job.bag, out=job.out_dir, progress=False)
    hook = None if on_frame is None else (lambda n: on_frame(job, attempt, n))
    try:
        from mfuser_ros.replay.runner import run_replay  # noqa: PLC0415 - see the imports

        result = run_replay(options, loaded=loaded, on_frame=hook)
        report = os.path.relpath(result.report_md, out_root)
        record = bag_record_from_result(result, str(job.bag), job.bag_id, report, fingerprint, worst,
                                        attempts=attempt, worker=worker)
    except MFuserError as err:
        return failed_record(str(job.bag), job.bag_id, str(err), attempt, worker), False
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        reason = f"{type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})"
        return failed_record(str(job.bag), job.bag_id, reason, attempt, worker), True
    write_bag_record(job.result_path, record)
    return record, False
