"""mfuser-replay-fleet: many demo bags as one job on a real local Ray instance, with the bundled model.

One Ray instance (2 CPUs, small object store, no dashboard, 127.0.0.1 only) serves the whole module. The merged
numbers are checked against single-bag ``run_replay`` runs in this process; faults are real (a file that is not a bag,
a worker process that exits mid-bag), injected through the runner's per-frame hook.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mfuser_model.metrics import ConfusionMatrix
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.model_loader import load_model
from mfuser_ros.replay.demo_bag import DemoCamera, make_demo_bag
from mfuser_ros.replay.fleet_jobs import FleetError, bag_id, expand_bags
from mfuser_ros.replay.fleet_report import merge_records, read_bag_record
from mfuser_ros.replay.frame_log import read_frames_csv
from mfuser_ros.replay.runner import EXIT_ERROR, EXIT_OK, ReplayOptions, run_replay

pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")
# ray is not imported here (the fleet sets Ray's loopback switch before Ray's first import), nor by this import.
from mfuser_ros.replay.fleet import FleetOptions, connect_ray, main, run_fleet, start_local_ray

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "tiny-eva02-synthetic.safetensors"
CAMERAS = [DemoCamera("cam_game", "game"), DemoCamera("cam_fog", "fog", compressed=True)]


@pytest.fixture(scope="module")
def ray_session():
    """One private local Ray instance for the module (start-up takes seconds on a busy 2-core machine)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is part of the [fleet] extra")
    start_local_ray(num_cpus=2, num_gpus=0, object_store_mb=80)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("drives")
    return [make_demo_bag(root / f"drive{i}", CAMERAS, frames=2, size=(96, 48), seed=100 * i) for i in range(3)]


@pytest.fixture(scope="module")
def base() -> ReplayOptions:
    node = NodeConfig(checkpoint=str(CHECKPOINT), preset="", warmup=True)
    return ReplayOptions(bag=Path("unused"), out=Path("unused"), node=node, montage_rows=2, progress=False)


@pytest.fixture(scope="module")
def single_runs(bags, base, tmp_path_factory):
    """Each bag replayed alone, in this process: what the fleet's merge must reproduce."""
    loaded = load_model(base.node)
    out = tmp_path_factory.mktemp("single")
    return [run_replay(replace(base, bag=bag, out=out / bag.name), loaded=loaded) for bag in bags]


def _counts(result, camera=None) -> np.ndarray:
    ev = result.evaluator
    return (ev.matrices[camera] if camera else ev.overall()).counts_array()


def _fleet(bags, base, out, **kw) -> FleetOptions:
    return FleetOptions(bags=tuple(bags), out=out, replay=base, workers=kw.pop("workers", 2), **kw)


@pytest.fixture(scope="module")
def three_bag_job(ray_session, bags, base, tmp_path_factory):
    """One job over the three bags on 2 workers (the resume test continues from a copy of its folder)."""
    return run_fleet(_fleet(bags, base, tmp_path_factory.mktemp("fleet") / "job"), log=lambda _: None)


def test_one_job_over_three_bags_sums_the_single_bag_confusion_matrices(three_bag_job, single_runs):
    result = three_bag_job
    assert result.exit_code == EXIT_OK
    merged = result.merged
    assert (merged["bags_ok"], merged["bags_failed"], merged["bags_resumed"]) == (3, 0, 0)
    expected = sum(_counts(r) for r in single_runs)
    np.testing.assert_array_equal(merged["overall"]["metrics"]["confusion_matrix"], expected)
    cm = ConfusionMatrix(19)
    cm.add_counts(expected)
    assert merged["overall"]["metrics"]["mIoU"] == pytest.approx(cm.miou(), abs=1e-12)
    bag_mious = [r.summary["overall"]["metrics"]["mIoU"] for r in single_runs]
    assert merged["overall"]["metrics"]["mIoU"] != pytest.approx(float(np.mean(bag_mious)), abs=1e-9)
    for ns in ("/cam_game", "/cam_fog"):
        np.testing.assert_array_equal(merged["cameras"][ns]["metrics"]["confusion_matrix"],
                                      sum(_counts(r, ns) for r in single_runs))
        assert merged["cameras"][ns]["frames"] == 6
    for record, single in zip(result.records, single_runs, strict=True):
        np.testing.assert_array_equal(record.matrix().counts_array(), _counts(single))
        assert record.bag == str(single.summary["bag"])
    # Latency: every frame's sample is in the merged sketch, its percentiles are within the sketch's accuracy.
    samples = [f.latency_ms for r in result.records
               for f in read_frames_csv(result.metrics_json.parent / Path(r.report).parent / "frames.csv")]
    assert merged["overall"]["latency_sketch"]["count"] == len(samples) == 12
    p95 = float(np.quantile(samples, 0.95, method="lower"))
    assert merged["overall"]["latency_ms"]["p95"] == pytest.approx(p95, rel=0.0051)
    # The model is loaded once per worker process: never per bag.
    workers = {(r.worker["host"], r.worker["pid"]) for r in result.records}
    assert 1 <= len(workers) <= 2
    assert {r.worker["model_loads"] for r in result.records} == {1}
    # The worst frames are the evaluated frames with the lowest frame mIoU, over all bags.
    frame_mious = sorted(f.miou for r in result.records
                         for f in read_frames_csv(result.metrics_json.parent / Path(r.report).parent / "frames.csv"))
    assert [f["miou"] for f in merged["worst_frames"]] == pytest.approx(frame_mious[:10])
    report = result.report_md.read_text(encoding="utf-8")
    for heading in ("## Overall", "## Per camera", "## Per bag", "## Worst bags", "## Worst frames"):
        assert heading in report
    assert json.loads(result.metrics_json.read_text())["job"]["bags_run"] == 3
    # The merged report names its mIoU rule; the BDD100K toolkit's is one merge away from the same counts.
    assert "- mIoU rule: mmseg rule" in report and "| mIoU | mAcc | aAcc |" in report
    assert merged["miou_rule"] == "mmseg" and merged["overall"]["metrics"]["miou_rule"] == "mmseg"
    bdd = merge_records(result.records, rule="bdd100k")["overall"]["metrics"]
    assert bdd["mIoU"] == pytest.approx(cm.miou("bdd100k"), abs=1e-12) and bdd["miou_rule"] == "bdd100k"


def test_a_resumed_job_skips_complete_bags_and_reruns_the_rest(three_bag_job, bags, base, tmp_path):
    out = tmp_path / "job"
    shutil.copytree(three_bag_job.metrics_json.parent, out)
    first = three_bag_job
    again = run_fleet(_fleet(bags, base, out), log=lambda _: None)
    assert again.merged["bags_resumed"] == 3 and again.job["bags_run"] == 0 and again.exit_code == EXIT_OK
    np.testing.assert_array_equal(again.merged["overall"]["metrics"]["confusion_matrix"],
                                  first.merged["overall"]["metrics"]["confusion_matrix"])
    # A bag whose result is missing (the job died while it ran) is replayed; its stale outputs are cleared.
    redo = out / "bags" / bag_id(bags[1])
    (redo / "fleet_result.json").unlink()
    third = run_fleet(_fleet(bags, base, out), log=lambda _: None)
    assert third.merged["bags_resumed"] == 2 and third.job["bags_run"] == 1
    assert [b["bag_id"] for b in third.merged["bags"] if not b["resumed"]] == [bag_id(bags[1])]
    np.testing.assert_array_equal(third.merged["overall"]["metrics"]["confusion_matrix"],
                                  first.merged["overall"]["metrics"]["confusion_matrix"])
    # --redo replays a complete bag (its old outputs go first: the runner refuses to overwrite an output bag).
    redone = run_fleet(_fleet(bags[:1], base, out, redo=True), log=lambda _: None)
    assert redone.exit_code == EXIT_OK and redone.merged["bags_resumed"] == 0 and redone.job["bags_run"] == 1
    np.testing.assert_array_equal(redone.records[0].matrix().counts_array(), first.records[0].matrix().counts_array())
    # Results made with other settings are never mixed in.
    with pytest.raises(FleetError, match="other settings"):
        run_fleet(_fleet(bags, replace(base, max_frames=1), out), log=lambda _: None)


def crash_hook(job, attempt: int, frames: int) -> None:
    """Kills the worker process mid-bag: always for bags named crash*, on the first attempt for flaky*."""
    name = job.bag.name
    if frames == 2 and (name.startswith("crash") or (name.startswith("flaky") and attempt == 1)):
        os._exit(3)


def test_a_crashing_worker_loses_only_its_own_bag(ray_session, bags, base, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels to the workers
    root = tmp_path / "drives"
    crash = make_demo_bag(root / "crash", CAMERAS, frames=2, size=(96, 48), seed=7)
    flaky = make_demo_bag(root / "flaky", CAMERAS, frames=2, size=(96, 48), seed=8)
    broken = root / "broken.mcap"
    broken.write_bytes(b"not an mcap file at all")
    job = [bags[0], crash, broken, flaky]
    result = run_fleet(_fleet(job, base, tmp_path / "job", retries=1), on_frame=crash_hook, log=lambda _: None)
    assert result.exit_code == EXIT_ERROR
    by_bag = {Path(r.bag).name: r for r in result.records}
    assert by_bag["drive0"].status == "ok" and by_bag["drive0"].attempts == 1
    assert by_bag["flaky"].status == "ok" and by_bag["flaky"].attempts == 2
    assert by_bag["crash"].status == "failed" and by_bag["crash"].attempts == 2
    assert "worker died" in by_bag["crash"].reason
    assert by_bag["broken.mcap"].status == "failed" and by_bag["broken.mcap"].attempts == 1  # input error: no retry
    assert "broken.mcap" in by_bag["broken.mcap"].reason
    failed = {Path(f["bag"]).name: f["reason"] for f in result.merged["failed"]}
    assert set(failed) == {"crash", "broken.mcap"}
    report = result.report_md.read_text(encoding="utf-8")
    assert "## Failed bags" in report and "worker died" in report
    # Three deaths (crash twice, flaky once): at most one fresh worker per retry, none for the last death.
    assert 2 < result.job["workers_started"] <= 2 + 2
    # Only complete bags count, and a failed bag leaves no result a resume would trust.
    ok = [by_bag["drive0"], by_bag["flaky"]]
    np.testing.assert_array_equal(result.merged["overall"]["metrics"]["confusion_matrix"],
                                  sum(r.matrix().counts_array() for r in ok))
    assert not (tmp_path / "job" / "bags" / bag_id(crash) / "fleet_result.json").exists()
    assert read_bag_record(tmp_path / "job" / "bags" / bag_id(flaky) / "fleet_result.json").attempts == 2


def slow_hook(job, attempt: int, frames: int) -> None:
    """A bag that hangs (a stalled network file system, say)."""
    time.sleep(600)


def test_a_bag_past_its_timeout_is_stopped_and_listed(ray_session, bags, base, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t0 = time.monotonic()
    result = run_fleet(_fleet(bags[:1], base, tmp_path / "job", workers=1, retries=0, bag_timeout_s=4),
                       on_frame=slow_hook, log=lambda _: None)
    assert time.monotonic() - t0 < 120
    assert result.exit_code == EXIT_ERROR
    assert result.records[0].status == "failed" and "timed out after 4 s" in result.records[0].reason
    assert result.job["workers_started"] == 1  # nothing left to replay: the killed worker is not replaced


def test_command_line_reads_a_bag_list(ray_session, bags, base, tmp_path, capsys):
    listing = tmp_path / "bags.txt"
    listing.write_text(f"# the day's drives\n{bags[0]}\n\n{os.path.relpath(bags[1], tmp_path)}  # relative\n")
    code = main([str(bags[2]), "--bag-list", str(listing), "--out", str(tmp_path / "job"), "--checkpoint",
                 str(CHECKPOINT), "--workers", "1", "--montage-rows", "0"])
    out = capsys.readouterr()
    assert code == EXIT_OK, out.err
    assert "bags: 3 ok, 0 partial, 0 failed" in out.out and "overall mIoU" in out.out
    merged = json.loads((tmp_path / "job" / "fleet_metrics.json").read_text())
    assert [Path(b["bag"]).name for b in merged["bags"]] == ["drive2", "drive0", "drive1"]
    assert merged["job"]["workers"] == 1


def test_the_local_ray_instance_listens_on_loopback_only(ray_session):
    psutil = pytest.importorskip("psutil")
    nodes = {n["NodeManagerAddress"] for n in ray_session.nodes()}
    assert nodes == {"127.0.0.1"}
    ours = psutil.Process().children(recursive=True)
    assert ours, "Ray's processes are children of this one"
    pids = {p.pid for p in ours}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening
    assert {c.laddr.ip for c in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


# -- without Ray ----------------------------------------------------------------------------------------------------
def flaky_hook(job, attempt: int, frames: int) -> None:
    """A passing fault (an I/O error, say) on a flaky* bag's first attempt."""
    if job.bag.name.startswith("flaky") and attempt == 1:
        raise OSError("injected: the network file system went away")


def test_in_process_job_needs_no_ray_and_merges_retries_and_resumes_alike(bags, base, single_runs, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails: this job must not need it
    flaky = make_demo_bag(tmp_path / "drives" / "flaky", CAMERAS, frames=2, size=(96, 48), seed=8)
    broken = tmp_path / "drives" / "broken.mcap"
    broken.write_bytes(b"not an mcap file at all")
    out = tmp_path / "job"
    options = _fleet([*bags, flaky, broken], base, out, workers=1, retries=1, in_process=True)
    result = run_fleet(options, on_frame=flaky_hook, log=lambda _: None)
    assert result.exit_code == EXIT_ERROR and result.job["cluster"] == "this process, without Ray"
    by_bag = {Path(r.bag).name: r for r in result.records}
    assert [by_bag[b.name].status for b in bags] == ["ok"] * 3
    assert (by_bag["flaky"].status, by_bag["flaky"].attempts) == ("ok", 2)  # retried, bounded by retries=1
    assert (by_bag["broken.mcap"].status, by_bag["broken.mcap"].attempts) == ("failed", 1)  # input error: no retry
    assert [Path(f["bag"]).name for f in result.merged["failed"]] == ["broken.mcap"]
    # One model for the whole job, loaded in this process; the same merge as the Ray job.
    assert {(r.worker["pid"], r.worker["model_loads"]) for r in result.records if r.status == "ok"} == {
        (os.getpid(), by_bag["drive0"].worker["model_loads"])}
    expected = sum(_counts(r) for r in single_runs) + by_bag["flaky"].matrix().counts_array()
    np.testing.assert_array_equal(result.merged["overall"]["metrics"]["confusion_matrix"], expected)
    # The command line: Ray's options are refused with --in-process; a rerun resumes (only the broken bag again).
    assert main([str(bags[0]), "--out", str(out), "--checkpoint", str(CHECKPOINT), "--in-process",
                 "--bag-timeout-s", "5"]) == EXIT_ERROR
    assert "--in-process replays one bag at a time" in capsys.readouterr().err
    code = main([*(str(b) for b in bags), str(flaky), "--out", str(out), "--checkpoint", str(CHECKPOINT),
                 "--in-process", "--montage-rows", "2", "--retries", "1"])
    assert code == EXIT_OK, capsys.readouterr().err
    merged = json.loads((out / "fleet_metrics.json").read_text())
    assert (merged["bags_resumed"], merged["job"]["bags_run"]) == (4, 0)
    np.testing.assert_array_equal(merged["overall"]["metrics"]["confusion_matrix"], expected)


def test_an_unreachable_cluster_address_fails_at_once_with_its_name():
    t0 = time.monotonic()
    with pytest.raises(FleetError, match=r"'127.0.0.1:1': cannot reach the Ray cluster"):
        connect_ray("127.0.0.1:1")
    assert time.monotonic() - t0 < 10


def test_bags_come_from_paths_globs_and_list_files(bags, tmp_path):
    root = bags[0].parent
    listing = tmp_path / "list.txt"
    listing.write_text(f"{bags[2]}\n# comment\n{bags[0]}\n")
    assert expand_bags([str(root / "drive*")]) == bags
    assert expand_bags([str(bags[1])], [listing]) == [bags[1], bags[2], bags[0]]
    assert expand_bags([str(bags[0]), str(bags[0])]) == [bags[0]]  # each bag once
    with pytest.raises(FleetError, match="no such bag"):
        expand_bags([str(root / "missing.mcap")])
    with pytest.raises(FleetError, match="matches no bag"):
        expand_bags([str(root / "*.db3")])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(FleetError, match="names no bag"):
        expand_bags([], [tmp_path / "empty.txt"])
    other = tmp_path / "elsewhere" / "drive0"
    assert bag_id(bags[0]) != bag_id(other) and bag_id(bags[0]).startswith("drive0-")
    assert bag_id(bags[0]) == bag_id(Path(os.path.relpath(bags[0])))


def test_frames_csv_holds_every_frame_and_its_score(single_runs):
    result = single_runs[0]
    rows = read_frames_csv(result.frames_csv)
    assert len(rows) == result.summary["frames"]["processed"] == 4
    assert sum(r.pixels for r in rows) == result.evaluator.overall().counts_array().sum()
    for r, mem in zip(rows, result.frame_log.records, strict=True):
        assert (r.camera, r.index, r.stamp_ns) == (mem.camera, mem.index, mem.stamp_ns)
        assert r.miou == pytest.approx(mem.miou) and not math.isnan(r.miou)
