"""Soak: the DDS node under mixed valid and malformed traffic, with publishers that come and go; RSS and answers.

    .venv/bin/python benchmarks/node_soak.py [--duration 60] [--valid-hz 2] [--bad-hz 20] [--cycle 10]
                                             [-p NAME=VALUE ...]

Starts ``mfuser-node --transport dds`` (tiny-eva02, random weights unless ``-p checkpoint=...``) in its own process
on a loopback-only domain with three cameras, ``front/image_raw``, ``rear/image_raw/compressed`` and
``side/image_raw``, then for ``--duration`` seconds sends:

- valid frames, 128x96 rgb8 on front at ``--valid-hz``, from a camera publisher that leaves (its instance
  disposed, its participant deleted) and comes back every ``--cycle`` s; every tenth valid frame is stamped
  sec=0 (a camera without time sync), which the node must still answer;
- on side, a camera process (valid frames at 10 Hz) that is killed with SIGKILL every cycle and started again;
- malformed traffic at ``--bad-hz`` on both cameras: bad step, truncated data, unknown or 10,000-character
  encodings, zero and absurd sizes, odd YUV widths, strings that are not UTF-8 (raw CDR), bit-flipped and
  truncated JPEGs, garbage payloads; and every cycle one 4096x4096 PNG of a few KB on rear (valid, but the
  frame that used to starve the node).

Printed every 5 s and at the end: the node's RSS (from /proc), valid frames sent / answered and the ratio, the
node's own counters (in, out, dropped, errors, clock_skew). The node must still be alive at the end and exit 0 on
SIGTERM. Frames sent before a new publisher is matched are not counted as sent.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = (96, 128)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def camera_process(domain_id: int, seconds: float) -> None:
    """The camera that gets killed: valid frames on side at 10 Hz."""
    from cyclonedds.domain import DomainParticipant

    from mfuser_ros.node.dds import Time_

    dp = DomainParticipant(domain_id)
    writer = _writer(dp, "side/image_raw", "Image_")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writer.write(rgb_frame(Time_(int(time.time()), 0)))
        time.sleep(0.1)


def _writer(dp, topic: str, type_name: str):
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic

    from mfuser_ros.node import dds

    return DataWriter(dp, Topic(dp, dds.dds_topic_name(topic), getattr(dds, type_name)),
                      qos=dds.dds_qos("sensor_data", 1))


def rgb_frame(stamp):
    from mfuser_ros.node.dds import Header_, Image_

    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 2, y * 2, x + y], -1).astype(np.uint8)
    return Image_(Header_(stamp, "front_optical"), h, w, "rgb8", 0, w * 3, pixels)


def malformed_samples(rng: np.random.Generator):
    """One malformed sample per call, cycling through the kinds: (topic index 0 front / 1 rear, sample, kind)."""
    from mfuser_ros.node.dds import CompressedImage_, Header_, Image_, Time_

    header = Header_(Time_(int(time.time()), 0), "bad")
    good = rgb_frame(Time_(1, 0))
    jpeg = cv2.imencode(".jpg", np.asarray(good.data).reshape(*SIZE, 3))[1].tobytes()

    def not_utf8():
        sample = rgb_frame(Time_(1, 1))
        wire = sample.serialize(use_version_2=False).replace(b"rgb8\x00", b"rg\xff8\x00")
        sample.serialize = lambda use_version_2=False, **_: wire
        return sample

    def flipped_jpeg():
        data = bytearray(jpeg)
        for _ in range(3):
            data[int(rng.integers(len(data) // 4, len(data) - 2))] ^= 1 << int(rng.integers(8))
        return CompressedImage_(header, "jpeg", bytes(data))

    makers = [
        ("bad step", 0, lambda: Image_(header, 96, 128, "rgb8", 0, 100, good.data)),
        ("truncated", 0, lambda: Image_(header, 96, 128, "rgb8", 0, 384, bytes(good.data)[:1000])),
        ("unknown encoding", 0, lambda: Image_(header, 96, 128, "bayer_rggb8", 0, 128, good.data)),
        ("long encoding", 0, lambda: Image_(header, 96, 128, "x" * 10_000, 0, 384, good.data)),
        ("zero size", 0, lambda: Image_(header, 0, 0, "rgb8", 0, 0, b"")),
        ("absurd size", 0, lambda: Image_(header, 100_000, 100_000, "rgb8", 0, 300_000, good.data)),
        ("odd yuyv", 0, lambda: Image_(header, 96, 127, "yuyv", 0, 254, good.data)),
        ("not UTF-8", 0, not_utf8),
        ("flipped jpeg", 1, flipped_jpeg),
        ("cut jpeg", 1, lambda: CompressedImage_(header, "jpeg", jpeg[: len(jpeg) // 2])),
        ("garbage", 1, lambda: CompressedImage_(header, "jpeg", b"\xff\xd8\xff\xe0garbage")),
    ]
    i = 0
    while True:
        kind, topic, make = makers[i % len(makers)]
        i += 1
        yield topic, make(), kind


def node_values(diagnostics) -> dict[str, dict[str, str]]:
    """The newest key/values per camera on /diagnostics."""
    values: dict[str, dict[str, str]] = {}
    for array in diagnostics.take(N=200):
        for status in array.status:
            camera = status.name.split(": ", 1)[-1].removesuffix(" segmentation")
            values[camera] = {kv.key: kv.value for kv in status.values}
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--valid-hz", type=float, default=2.0)
    parser.add_argument("--bad-hz", type=float, default=20.0)
    parser.add_argument("--cycle", type=float, default=10.0, help="seconds between publisher restarts")
    parser.add_argument("-p", "--param", action="append", default=[], help="node parameter NAME=VALUE")
    parser.add_argument("--camera", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from mfuser_ros.node import dds

    os.environ["CYCLONEDDS_URI"] = dds.loopback_uri()  # never off the host
    if args.camera is not None:
        camera_process(args.camera, 60.0)
        return 0
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    domain_id = 1 + os.getpid() % 200
    node = subprocess.Popen(
        [sys.executable, "-m", "mfuser_ros.node.cli", "--transport", "dds", "--loopback", "--domain-id",
         str(domain_id), "-p", "image_topics=[front/image_raw, rear/image_raw/compressed, side/image_raw]",
         "-p", "warmup=false", "-p", "diagnostics_period_s=0.5", "-p", "stats_window_s=5.0",
         "-p", "allow_random_weights=true", *[x for p in args.param for x in ("-p", p)]],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "ready" in node.stdout.readline(), node.stderr.read()[-2000:]
    print(f"node pid {node.pid}, RSS at ready {rss_mb(node.pid):.0f} MB", flush=True)
    dp = DomainParticipant(domain_id)
    labels = DataReader(dp, Topic(dp, dds.dds_topic_name("front/mfuser/labels"), dds.Image_),
                        qos=dds.dds_qos("reliable", 200))
    side_labels = DataReader(dp, Topic(dp, dds.dds_topic_name("side/mfuser/labels"), dds.Image_),
                             qos=dds.dds_qos("reliable", 200))
    diagnostics = DataReader(dp, Topic(dp, dds.dds_topic_name("/diagnostics"), dds.DiagnosticArray_),
                             qos=dds.dds_qos("reliable", 200))
    chaos = [_writer(dp, "front/image_raw", "Image_"), _writer(dp, "rear/image_raw/compressed", "CompressedImage_")]
    bomb = dds.CompressedImage_(dds.Header_(dds.Time_(int(time.time()), 0), "rear"), "png",
                                cv2.imencode(".png", np.full((4096, 4096, 3), 90, np.uint8))[1].tobytes())
    bad = malformed_samples(np.random.default_rng(0))
    sent: set[tuple[int, int]] = set()
    answered: set[tuple[int, int]] = set()
    rss = [rss_mb(node.pid)]
    kinds: dict[str, int] = {}
    restarts = kills = side_answered = 0
    side_lives_answered: list[bool] = []
    publisher = camera_proc = None
    start = time.monotonic()
    next_valid = next_bad = next_report = start
    next_cycle = start
    index = 0
    try:
        while time.monotonic() - start < args.duration and node.poll() is None:
            now = time.monotonic()
            if now >= next_cycle:  # the camera leaves and comes back; the other camera is killed
                if publisher is not None:
                    pdp, writer = publisher
                    writer.dispose(rgb_frame(dds.Time_(0, 0)))
                    writer.__del__()  # cyclonedds deletes entities in __del__: the publisher is gone now
                    pdp.__del__()
                    restarts += 1
                pdp = DomainParticipant(domain_id)
                publisher = (pdp, _writer(pdp, "front/image_raw", "Image_"))
                if camera_proc is not None:
                    camera_proc.send_signal(signal.SIGKILL)
                    camera_proc.wait()
                    kills += 1
                    side_lives_answered.append(side_answered > 0)
                side_answered = 0
                camera_proc = subprocess.Popen([sys.executable, __file__, "--camera", str(domain_id)],
                                               stdout=subprocess.DEVNULL)
                chaos[1].write(bomb)
                kinds["png bomb 4096x4096"] = kinds.get("png bomb 4096x4096", 0) + 1
                next_cycle = now + args.cycle
            writer = publisher[1]
            if now >= next_valid and writer.get_publication_matched_status().current_count > 0:
                stamp = dds.Time_(0 if index % 10 == 9 else int(time.time()), index)  # every tenth: no time sync
                writer.write(rgb_frame(stamp))
                sent.add((stamp.sec, stamp.nanosec))
                index += 1
                next_valid = now + 1.0 / args.valid_hz
            if now >= next_bad:
                topic, sample, kind = next(bad)
                chaos[topic].write(sample)
                kinds[kind] = kinds.get(kind, 0) + 1
                next_bad = now + 1.0 / args.bad_hz
            answered.update((s.header.stamp.sec, s.header.stamp.nanosec) for s in labels.take(N=100))
            side_answered += len(side_labels.take(N=100))
            if now >= next_report:
                rss.append(rss_mb(node.pid))
                done = len(answered & sent)
                print(f"{now - start:6.1f} s  RSS {rss[-1]:6.0f} MB  valid sent {len(sent):4d} answered {done:4d} "
                      f"({done / max(len(sent), 1):.1%})  restarts {restarts} kills {kills}", flush=True)
                next_report = now + 5.0
            time.sleep(0.005)
        time.sleep(2.0)  # the last frames' answers
        answered.update((s.header.stamp.sec, s.header.stamp.nanosec) for s in labels.take(N=200))
        cameras = node_values(diagnostics)
        alive = node.poll() is None
        rss.append(rss_mb(node.pid) if alive else float("nan"))
    finally:
        if camera_proc is not None:
            camera_proc.kill()
            camera_proc.wait()
        node.send_signal(signal.SIGTERM)
        try:
            _, err = node.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            _, err = node.communicate()
    done = len(answered & sent)
    print(f"\nduration {args.duration:.0f} s, valid {args.valid_hz} Hz, malformed {args.bad_hz} Hz, "
          f"publisher restarts {restarts}, camera processes killed {kills}")
    print("malformed sent: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"valid frames answered: {done} of {len(sent)} ({done / max(len(sent), 1):.1%}); "
          f"of those stamped sec=0: {len({s for s in answered & sent if s[0] == 0})} of "
          f"{len({s for s in sent if s[0] == 0})}")
    print(f"side camera killed with SIGKILL {kills} times; each of its {len(side_lives_answered)} lives answered: "
          f"{all(side_lives_answered)}")
    print(f"node RSS: at ready {rss[0]:.0f} MB, peak {np.nanmax(rss):.0f} MB, end {rss[-1]:.0f} MB")
    for name in ("front", "rear", "side"):
        values = cameras.get(name, {})
        print(f"node {name}: " + ", ".join(f"{k} {values.get(k, '?')}" for k in
                                            ("frames_in", "frames_out", "dropped", "errors", "clock_skew")))
    print(f"node alive at the end: {alive}; exit status after SIGTERM: {node.returncode}"
          f"{' (abort!)' if 'terminate called' in err else ''}")
    tracebacks = err.count("Traceback")
    longest = max(map(len, err.splitlines()), default=0)
    print(f"tracebacks in the node's stderr: {tracebacks}; its longest line: {longest} characters")
    return 0 if alive and node.returncode == 0 and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
