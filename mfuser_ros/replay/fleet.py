"""``mfuser-replay-fleet``: many bags as one replay-evaluation job, on Ray; one merged report.

A sibling of ``mfuser-replay`` rather than a mode of it: single-bag replay (on the vehicle's own machine, in the node's
package) keeps working without Ray installed, and the fleet options (workers, cluster address, retries, resume) do
not clutter it. Each bag is replayed by the single-bag runner (:func:`mfuser_ros.replay.runner.run_replay`), so a
bag's outputs and report are exactly what ``mfuser-replay`` writes for it.

How it runs on Ray:

- a pool of worker actors, each declaring ``--cpus-per-bag`` / ``--gpus-per-bag``; an actor loads the model once
  and then replays one bag per call (one Ray task per bag) until the queue is empty. Actors rather than plain
  tasks because Ray never reuses a GPU task's process (``max_calls=1``): a task would load the model per bag;
- without ``--ray-address`` (or ``RAY_ADDRESS``) a private local Ray instance with ``--workers`` slots is started on
  127.0.0.1 only (no port on another interface, no usage statistics sent), and stopped at the end;
- a bag whose worker crashes (segfault, OOM kill, lost node) or fails with an unexpected error is retried on a fresh
  worker, ``--retries`` times at most; an input error (a bag that cannot be read) is not retried. Either way only
  that bag is lost, and the merged report lists it with the reason;
- bags with a complete result in ``--out`` (``bags/<id>/fleet_result.json``, made with the same settings) are
  skipped, so a job that was stopped or crashed is resumed by running the same command again.

``--in-process`` runs the same job without Ray: one worker object in this process (one model load), the bags one
after another, the same bounded retries, per-bag results, resume and merged report. Ray stays the default because
only a separate worker process isolates a crash (segfault, OOM kill) to its bag and lets a hung bag be stopped; in
process, a crash stops the job (running it again resumes) and ``--bag-timeout-s`` is refused. It is for a laptop
or CI without Ray, and saves Ray's start-up (seconds) on a one-worker job.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mfuser_model.config_io import NonNegFloat, NonNegInt, PosFloat, PosInt, check_fields
from mfuser_model.errors import MFuserError
from mfuser_model.metrics import MiouRule
from mfuser_model.report import model_file_record, percent
from mfuser_ros.replay.fleet_jobs import (
    BagJob,
    FleetError,
    expand_bags,
    find_complete,
    plan_jobs,
    replay_bag,
    settings_fingerprint,
)
from mfuser_ros.replay.fleet_report import BagRecord, failed_record, merge_records, write_fleet_report
from mfuser_ros.replay.options import EXIT_BAG_DAMAGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, ReplayOptions

__all__ = ["FleetOptions", "FleetResult", "connect_ray", "main", "run_fleet", "start_local_ray"]

OnFrame = Callable[[BagJob, int, int], None]
_MODEL_LOADS = 0  # models loaded by this process (a worker actor reports it with every bag)


@dataclass(frozen=True)
class FleetOptions:
    """One fleet job.

    Attributes:
        bags: the bags (see :func:`fleet_jobs.expand_bags`). out: job folder (``bags/<id>/`` per bag, merged report).
        replay: the single-bag options every bag runs with (``bag`` and ``out`` are replaced per bag).
        workers: worker actors (0: one per ``cpus_per_bag`` CPUs, and per ``gpus_per_bag`` GPUs, available).
        ray_address: a Ray cluster to run on (``auto``, ``HOST:PORT``, ``ray://...``); None: ``RAY_ADDRESS``, else
            a private local instance.
        cpus_per_bag / gpus_per_bag: resources each worker declares (its torch threads follow the CPUs).
        retries: further attempts for a bag whose worker crashed or hit an unexpected error.
        bag_timeout_s: a bag taking longer is stopped (its worker killed) and counts as failed (0: no limit).
        redo: replay every bag again, even those with a complete result in ``out``.
        worst: bags and frames listed as the worst in the report.
        object_store_mb: object store of a local Ray instance (results are small; this caps its shared memory).
        in_process: no Ray: the bags one after another in this process, one model load, the same retries and
            results; no crash isolation and no ``bag_timeout_s`` (nothing can stop a hung bag from inside).
    """

    bags: tuple[Path, ...]
    out: Path
    replay: ReplayOptions
    workers: NonNegInt = 0
    ray_address: str | None = None
    cpus_per_bag: PosFloat = 1.0
    gpus_per_bag: NonNegFloat = 0.0
    retries: NonNegInt = 2
    bag_timeout_s: NonNegFloat = 0.0
    redo: bool = False
    worst: NonNegInt = 10
    object_store_mb: PosInt = 256
    in_process: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class FleetResult:
    """What a job produced: every bag's record (resumed ones included), the merged summary, files, exit code."""

    records: list[BagRecord]
    merged: dict[str, Any]
    job: dict[str, Any]
    metrics_json: Path
    report_md: Path
    exit_code: int
    log: list[str] = field(default_factory=list)


# -- Ray ------------------------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415
    except ImportError as err:
        msg = ("mfuser-replay-fleet needs Ray: pip install -e '.[fleet]' (the pinned version), or run the bags in "
               "this process with --in-process")
        raise FleetError(msg) from err
    return ray


def start_local_ray(num_cpus: float, num_gpus: float | None = 0, object_store_mb: int = 256) -> None:
    """Start a private Ray instance on this machine, reachable on 127.0.0.1 only, without usage statistics.

    Ray advertises (and binds) the machine's LAN address unless it runs as on a laptop OS; that switch is an
    environment variable read when ``ray`` is imported, so it is set first and the result is checked after start.

    Raises:
        FleetError: Ray is not installed, or the instance came up on another address (then it is stopped again).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback node address
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # never phone home
    ray = _import_ray()
    ray.init(address="local", num_cpus=max(1, math.ceil(num_cpus)), num_gpus=num_gpus,
             object_store_memory=object_store_mb * 1024 * 1024, include_dashboard=False,
             configure_logging=False, log_to_driver=True)
    addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        ray.shutdown()
        msg = (f"the local Ray instance came up on {sorted(addresses)}, not 127.0.0.1 only; was `ray` imported "
               "before mfuser-replay-fleet set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0?")
        raise FleetError(msg)


def connect_ray(address: str, probe_timeout_s: float = 5.0) -> None:
    """Join an existing Ray cluster as its driver.

    A ``HOST:PORT`` (or ``ray://HOST:PORT``) address is probed first: Ray itself retries an unreachable address for
    minutes without a word that helps.

    Raises:
        FleetError: Ray is missing or the cluster cannot be reached (names the address).
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if sep and host and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=probe_timeout_s).close()
        except OSError as err:
            msg = f"--ray-address / RAY_ADDRESS {address!r}: cannot reach the Ray cluster there: {err}"
            raise FleetError(msg) from err
    ray = _import_ray()
    try:
        ray.init(address=address, configure_logging=False, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        msg = f"--ray-address / RAY_ADDRESS {address!r}: cannot join the Ray cluster: {err}"
        raise FleetError(msg) from err


def _worker_count(ray: Any, options: FleetOptions, jobs: int) -> int:
    if options.workers > 0:
        return min(options.workers, jobs)
    resources = ray.cluster_resources()
    n = int(resources.get("CPU", 1) // max(options.cpus_per_bag, 1e-9))
    if options.gpus_per_bag > 0:
        n = min(n, int(resources.get("GPU", 0) // options.gpus_per_bag))
        if n < 1:
            msg = f"--gpus-per-bag {options.gpus_per_bag}: the Ray cluster has {resources.get('GPU', 0)} GPUs"
            raise FleetError(msg)
    return max(1, min(n, jobs))


class BagWorker:
    """A Ray actor (or, ``--in-process``, a plain object): loads the model once, then replays one bag per call."""

    def __init__(self, base: ReplayOptions, fingerprint: str, out_root: Path, worst: int, threads: int,
                 on_frame: OnFrame | None = None) -> None:
        global _MODEL_LOADS  # noqa: PLW0603 - one counter per worker process
        from mfuser_model.threads import apply_threads  # noqa: PLC0415
        from mfuser_ros.node.model_loader import load_model  # noqa: PLC0415

        apply_threads(threads)  # the project's policy, with the CPUs this worker declared
        self.base, self.fingerprint, self.out_root, self.worst, self.on_frame = (base, fingerprint, out_root, worst,
                                                                                on_frame)
        self.loaded, self.error = None, None
        try:
            self.loaded = load_model(base.node)
            _MODEL_LOADS += 1
        except MFuserError as err:
            self.error = f"the worker could not load the model: {err}"

    def identity(self) -> dict[str, Any]:
        """Where this worker runs, and how many models its process loaded."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "model_loads": _MODEL_LOADS}

    def run(self, job: BagJob, attempt: int) -> tuple[dict[str, Any], bool]:
        """Replay one bag; returns (its record as a dict, whether a failure is worth retrying)."""
        if self.loaded is None:
            return failed_record(str(job.bag), job.bag_id, self.error or "no model", attempt,
                                 self.identity()).to_dict(), False
        record, retryable = replay_bag(job, self.base, self.loaded, self.fingerprint, self.out_root,
                                       attempt=attempt, worst=self.worst, worker=self.identity(),
                                       on_frame=self.on_frame)
        return record.to_dict(), retryable


@dataclass
class _Running:
    worker: int
    job: BagJob
    attempt: int
    started: float
    timed_out: bool = False


def _outcome(ray: Any, ref: Any, run: _Running, timeout_s: float) -> tuple[BagRecord, bool, bool]:
    """(record, retryable, whether the worker died) of one finished call."""
    from ray.exceptions import RayActorError, RayError  # noqa: PLC0415

    try:
        data, retryable = ray.get(ref)
        return BagRecord.from_dict(data, f"result of {run.job.bag}"), retryable, False
    except RayActorError as err:
        why = (f"timed out after {timeout_s:g} s" if run.timed_out
               else f"the worker died: {str(err).strip().splitlines()[0]}")
        return failed_record(str(run.job.bag), run.job.bag_id, why, run.attempt), True, True
    except (RayError, MFuserError) as err:
        reason = str(err).strip().splitlines()[-1]
        return failed_record(str(run.job.bag), run.job.bag_id, reason, run.attempt), True, False


def _stop_overdue(ray: Any, workers: Sequence[Any], running: Iterable[_Running], timeout_s: float) -> None:
    """Kill the worker of every bag past ``timeout_s`` (0: no limit); its call then fails as timed out."""
    now = time.monotonic()
    for run in running:
        if timeout_s > 0 and not run.timed_out and now - run.started > timeout_s:
            run.timed_out = True
            ray.kill(workers[run.worker], no_restart=True)


def _dispatch(ray: Any, jobs: Sequence[BagJob], spawn: Callable[[], Any], n_workers: int, retries: int,
              timeout_s: float, done: Callable[[BagRecord], None], log: Callable[[str], None]) -> int:
    """Keep every worker busy with one bag until all bags have a record; replace workers that die.

    A dead worker is replaced only when a bag waits for its slot and no live worker is idle: a new worker costs a
    process start and a model load, wasted at the end of a job. Bounded: a bag is tried at most ``retries + 1``
    times, and each wait returns within a second. Returns the workers started.
    """
    queue = deque((job, 1) for job in jobs)
    workers: list[Any] = [spawn() for _ in range(n_workers)]  # None: died, not replaced yet
    started = n_workers
    idle = list(range(n_workers))
    running: dict[Any, _Running] = {}
    try:
        while queue or running:
            while idle and queue:
                idle.sort(key=lambda i: workers[i] is not None)  # live workers are taken first
                w = idle.pop()
                if workers[w] is None:
                    workers[w] = spawn()  # a fresh process, which loads the model once
                    started += 1
                job, attempt = queue.popleft()
                running[workers[w].run.remote(job, attempt)] = _Running(w, job, attempt, time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                run = running.pop(ref)
                record, retryable, died = _outcome(ray, ref, run, timeout_s)
                if died:
                    # Unreachable is not always dead: make sure it no longer writes into the bag's folder.
                    ray.kill(workers[run.worker], no_restart=True)
                    workers[run.worker] = None
                if record.status == "failed" and retryable and run.attempt <= retries:
                    log(f"{run.job.bag_id}: attempt {run.attempt} failed ({record.reason}); retrying")
                    queue.appendleft((run.job, run.attempt + 1))
                else:
                    done(record)
                idle.append(run.worker)
            _stop_overdue(ray, workers, running.values(), timeout_s)
    finally:
        for worker in workers:
            if worker is not None:
                ray.kill(worker, no_restart=True)
    return started


def _run_on_ray(options: FleetOptions, todo: Sequence[BagJob], base: ReplayOptions, fingerprint: str, own_ray: bool,
                address: str | None, where: str, on_frame: OnFrame | None, done: Callable[[BagRecord], None],
                say: Callable[[str], None]) -> tuple[float, int, int]:
    """Replay ``todo`` on Ray workers (starting or joining Ray when this process has no session); returns
    (seconds spent starting Ray, workers, workers started including replacements)."""
    ray_s = 0.0
    if own_ray:
        t0 = time.perf_counter()
        if address:
            connect_ray(address)
        else:
            wanted = options.workers or max(1, int((os.cpu_count() or 1) // max(options.cpus_per_bag, 1e-9)))
            start_local_ray(min(wanted, len(todo)) * options.cpus_per_bag,
                            None if options.gpus_per_bag > 0 else 0, options.object_store_mb)
        ray_s = time.perf_counter() - t0
    ray = _import_ray()
    try:
        n_workers = _worker_count(ray, options, len(todo))
        threads = max(1, int(options.cpus_per_bag))  # as in --in-process
        actor = ray.remote(BagWorker).options(num_cpus=options.cpus_per_bag, num_gpus=options.gpus_per_bag,
                                              max_restarts=0, max_concurrency=1)

        def spawn() -> Any:
            return actor.remote(base, fingerprint, options.out, options.worst, threads, on_frame)

        say(f"mfuser-replay-fleet: {n_workers} workers on {where}; {options.cpus_per_bag:g} CPU, "
            f"{options.gpus_per_bag:g} GPU per bag")
        started = _dispatch(ray, todo, spawn, n_workers, options.retries, options.bag_timeout_s, done, say)
    finally:
        if own_ray:
            ray.shutdown()
    return ray_s, n_workers, started


def _run_here(worker: BagWorker, jobs: Sequence[BagJob], retries: int, done: Callable[[BagRecord], None],
              log: Callable[[str], None]) -> None:
    """``--in-process``: every bag in turn on one model in this process, with the same bounded retries.

    No isolation: a crash of this process (segfault, OOM kill) stops the job, and running it again resumes it.
    """
    for job in jobs:
        attempt = 1
        while True:
            data, retryable = worker.run(job, attempt)
            record = BagRecord.from_dict(data, f"result of {job.bag}")
            if record.status != "failed" or not retryable or attempt > retries:
                break
            log(f"{job.bag_id}: attempt {attempt} failed ({record.reason}); retrying")
            attempt += 1
        done(record)


# -- the job --------------------------------------------------------------------------------------------------------
def run_fleet(options: FleetOptions, *, on_frame: OnFrame | None = None,
              log: Callable[[str], None] | None = None) -> FleetResult:
    """Replay every bag on Ray workers and write the per-bag results and the merged report.

    Uses the Ray session this process already has (``ray.init`` done by the caller), else connects to
    ``ray_address`` / ``RAY_ADDRESS``, else starts a private local instance for the job and stops it afterwards.

    Args:
        on_frame: called in the worker with (job, attempt, frames read) after each frame (fault-injection tests).
        log: progress lines (default: printed to stderr).

    Raises:
        FleetError: no bags, a missing bag, an earlier result made with other settings, Ray missing (and no
            ``in_process``), ``in_process`` with Ray-only options.
        ConfigError / CheckpointError: the checkpoint cannot be read.
    """
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        (log or (lambda t: print(t, file=sys.stderr, flush=True)))(text)

    if options.in_process and (options.ray_address or options.workers > 1 or options.bag_timeout_s > 0):
        msg = ("--in-process replays one bag at a time in this process: it takes no --ray-address, no --workers "
               "above 1 and no --bag-timeout-s (use Ray for those)")
        raise FleetError(msg)
    t_start = time.perf_counter()
    jobs = plan_jobs(options.bags, options.out)
    if len({j.bag_id for j in jobs}) != len(jobs):
        msg = "two bags map to the same result folder; give each bag once"
        raise FleetError(msg)
    fingerprint, settings = settings_fingerprint(options.replay)
    previous = find_complete(jobs, fingerprint, redo=options.redo, warn=say)
    todo = [j for j in jobs if j.bag_id not in previous]
    say(f"mfuser-replay-fleet: {len(jobs)} bags, {len(previous)} already complete, {len(todo)} to replay")
    records: dict[str, BagRecord] = dict(previous)
    # Imported only once the mode is known: a local instance must set its loopback switch before the import.
    own_ray = sys.modules.get("ray") is None or not sys.modules["ray"].is_initialized()
    address = options.ray_address or os.environ.get("RAY_ADDRESS") or None
    where = ("this process, without Ray" if options.in_process else
             "the Ray session of this process" if not own_ray else
             f"the Ray cluster at {address}" if address else "a local Ray instance (127.0.0.1)")
    ray_s, interrupted, n_workers, started = 0.0, None, 0, 0
    finished = [0]

    def done(record: BagRecord) -> None:
        records[record.bag_id] = record
        finished[0] += 1
        say(f"[{finished[0]}/{len(todo)}] {_describe(record, options.replay.miou_rule)}")

    base = replace(options.replay, progress=False)
    try:
        if todo and options.in_process:
            n_workers = started = 1
            say(f"mfuser-replay-fleet: replaying the bags one after another in {where}")
            worker = BagWorker(base, fingerprint, options.out, options.worst, max(1, int(options.cpus_per_bag)),
                               on_frame)
            _run_here(worker, todo, options.retries, done, say)
        elif todo:
            ray_s, n_workers, started = _run_on_ray(options, todo, base, fingerprint, own_ray, address, where, on_frame,
                                           done, say)
    except KeyboardInterrupt:
        left = len(todo) - finished[0]
        interrupted = f"interrupted (Ctrl-C) with {left} bags not finished; run the same command again to resume"
    wall_s = time.perf_counter() - t_start
    ordered = [records[j.bag_id] for j in jobs if j.bag_id in records]
    ran = [r for r in ordered if not r.resumed]
    node = options.replay.node
    job = {"model": node.checkpoint or f"preset {node.preset} (random weights)",
           "model_tensors_sha256": model_file_record(node.checkpoint)["tensors_sha256"],
           "decoder_backend": node.decoder_backend, "miou_rule": options.replay.miou_rule,
           "fingerprint": fingerprint, "settings": settings,
           "cluster": where,
           "workers": n_workers, "workers_started": started,
           "cpus_per_bag": options.cpus_per_bag, "gpus_per_bag": options.gpus_per_bag,
           "retries": options.retries, "bag_timeout_s": options.bag_timeout_s, "wall_s": wall_s, "ray_start_s": ray_s,
           "bags_run": len(ran), "bags_per_minute": 60 * len(ran) / wall_s if ran and wall_s > 0 else 0.0,
           "sum_model_s": sum(r.model_s for r in ran), "sum_bag_wall_s": sum(r.wall_s for r in ran),
           "interrupted": interrupted}
    merged = merge_records(ordered, worst=options.worst, rule=options.replay.miou_rule)
    json_path, md_path = write_fleet_report(options.out, merged, job)
    say(f"merged report: {md_path}")
    if interrupted:
        code = EXIT_INTERRUPTED
    elif merged["bags_failed"] or len(ordered) < len(jobs):
        code = EXIT_ERROR
    else:
        code = EXIT_BAG_DAMAGED if merged["bags_partial"] else EXIT_OK
    return FleetResult(ordered, merged, job, json_path, md_path, code, lines)


def _describe(record: BagRecord, rule: MiouRule) -> str:
    if record.status == "failed":
        return f"{record.bag_id}: FAILED after {record.attempts} attempt(s): {record.reason}"
    cm = record.matrix()
    miou = cm.miou(rule) if cm is not None else math.nan
    frames = sum(c.frames for c in record.cameras.values())
    return (f"{record.bag_id}: {record.status}, {frames} frames, mIoU {percent(miou)}, {record.wall_s:.1f} s "
            f"(worker pid {record.worker.get('pid')})" + (f": {record.reason}" if record.reason else ""))


# -- command line ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``mfuser-replay-fleet`` command line: the bag list, the Ray options, and mfuser-replay's options."""
    from mfuser_ros.replay.cli import add_replay_arguments  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="mfuser-replay-fleet", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bags", nargs="*", help="bags (rosbag2 folder, .mcap, .db3, .bag) or globs, e.g. 'drives/**/*.mcap'")
    p.add_argument("--bag-list", action="append", type=Path, default=[], metavar="FILE",
                   help="text file with one bag per line (# comments; paths relative to the file)")
    p.add_argument("--out", type=Path, required=True,
                   help="job folder: bags/<id>/ per bag, fleet_report.md and fleet_metrics.json")
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument("--workers", type=int, default=0,
                           help="worker processes, each loading the model once (default: one per free slot)")
    ray_group.add_argument("--ray-address", help="Ray cluster to run on (default: $RAY_ADDRESS, else a local "
                                                  "instance on 127.0.0.1)")
    ray_group.add_argument("--cpus-per-bag", type=float, default=1.0, help="CPUs each worker declares (torch threads)")
    ray_group.add_argument("--gpus-per-bag", type=float, default=None,
                           help="GPUs each worker declares (default: 1 with --device cuda, else 0)")
    ray_group.add_argument("--retries", type=int, default=2, help="retries of a bag whose worker crashed")
    ray_group.add_argument("--bag-timeout-s", type=float, default=0.0, help="stop a bag after this long (0: never)")
    ray_group.add_argument("--in-process", action="store_true",
                           help="no Ray: replay the bags one after another in this process (one model load, same "
                                "retries and report; a crash stops the job, rerunning resumes it)")
    ray_group.add_argument("--redo", action="store_true", help="replay bags that already have a complete result")
    ray_group.add_argument("--worst", type=int, default=10, help="worst bags and frames listed in the report")
    add_replay_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mfuser-replay-fleet``."""
    from mfuser_ros.replay.cli import options_from_args  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    try:
        bags = expand_bags(args.bags, args.bag_list)
        replay = options_from_args(argparse.Namespace(**{**vars(args), "bag": bags[0], "no_progress": True}))
        gpus = args.gpus_per_bag if args.gpus_per_bag is not None else (
            1.0 if replay.node.device.startswith("cuda") else 0.0)
        result = run_fleet(FleetOptions(bags=tuple(bags), out=args.out, replay=replay, workers=args.workers,
                                        ray_address=args.ray_address, cpus_per_bag=args.cpus_per_bag,
                                        gpus_per_bag=gpus, retries=args.retries, bag_timeout_s=args.bag_timeout_s,
                                        redo=args.redo, worst=args.worst, in_process=args.in_process))
    except MFuserError as err:
        print(f"mfuser-replay-fleet: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    m = result.merged
    metrics = m["overall"]["metrics"]
    print(f"bags: {m['bags_ok']} ok, {m['bags_partial']} partial, {m['bags_failed']} failed "
          f"({m['bags_resumed']} from an earlier run); frames {m['overall']['frames']}, evaluated "
          f"{m['overall']['evaluated']}")
    if metrics and metrics["mIoU"] is not None:
        print(f"overall mIoU {percent(metrics['mIoU'])} (summed confusion matrix, {metrics['miou_rule']} rule), "
              f"pixel accuracy {percent(metrics['aAcc'])}")
    print(f"{result.job['bags_per_minute']:.2f} bags/min over {result.job['wall_s']:.1f} s; report: {result.report_md}")
    for f in m["failed"]:
        print(f"FAILED {f['bag']}: {f['reason']}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
