"""Per-frame time the node spends outside the model, stage by stage, and the DDS round trip.

    .venv/bin/python benchmarks/node_overhead.py [--reps 20] [--no-dds]

Stages per frame (median ms over ``--reps``), for 640x480, 1280x720, 1920x1080 and 3840x2160, raw rgb8 and jpeg
input, with the node's default network input box (network_image_width/height, 2048x1024):
- receive:     CDR bytes -> message object (what the DDS reader does; rclpy does this in C)
- decode:      message -> (H, W, 3) RGB (mfuser_ros.node.conversions)
- resize:      RGB -> the network input size, keeping the aspect ratio (mfuser_model.inference.resize_to_network,
               inside the Segmenter); 0 when the image already fits
- preprocess:  network-size RGB -> normalised (1, 3, h, w) tensor (mfuser_model.preprocess.normalize)
- postprocess: the network's (K, h/4, w/4) class scores -> labels at the camera's size (the Segmenter's whole-image
               path, mfuser_model.inference.labels_from_lowres: bilinear arg-max, K = 19, scores shaped like a
               street scene); "+conf" is the same with the confidence map
- encode:      labels -> mono8 output image; "+extras" adds colour, overlay and confidence images
- publish:     labels image -> DDS message -> DataWriter.write (CDR serialization + Cyclone's write, no reader)
"label path" = receive + decode + resize + preprocess + postprocess + encode + publish: everything the node does on
the CPU for the labels output except the network's forward (target <= 5 ms for 1920x1080 rgb8 on the project's 2-core
CPU). The DDS round trip sends a 640x480 rgb8 frame to an echo process over loopback and back (target <= 10 ms).

Compressed outputs (``--compressed-size``, default 1920x1080), against the raw topics they stand beside: bytes per
frame on the wire (the CDR-serialized message) and the encode time (median ms) of ``labels`` (mono8) vs
``labels/compressed`` (PNG at ``--png-level``, checked to decode to exactly the labels), and of ``color`` / ``overlay``
(bgr8) vs ``color/compressed`` / ``overlay/compressed`` (JPEG at ``--jpeg-quality``); the node's defaults unless
given. The labels are the postprocessed arg-max of street-scene scores (as above), the camera image a rendered
street scene (the overlay's background). "make" is the shared work (palette lookup, blending) the raw and compressed
topic both need; "encode" is what the compressed topic adds; "serialize" is building and CDR-serializing the message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np
import torch

from mfuser_model.inference import labels_from_lowres, network_size, resize_to_network
from mfuser_model.preprocess import normalize
from mfuser_model.synthetic.scenes import render_scene
from mfuser_model.threads import add_threads_argument, apply_threads
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.conversions import (
    OutputImage,
    encode_jpeg_bgr8,
    encode_png_mono8,
    labels_to_color_bgr,
    message_to_rgb,
    overlay_bgr,
    palette_lut_bgr,
)
from mfuser_ros.node.pipeline import FrameTiming, SegmentationPipeline, Wanted

SIZES = [(480, 640), (720, 1280), (1080, 1920), (2160, 3840)]
BOX = NodeConfig().network_input_box
NUM_CLASSES = 19


def median_ms(fn, reps: int) -> float:
    fn()  # warm caches and allocators
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def scene(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255
    return rgb.astype(np.uint8)


def scene_scores(height: int, width: int) -> torch.Tensor:
    """(K, H/4, W/4) scores with a street scene's regions: softened one-hot of a rendered label map."""
    _, labels = render_scene(np.random.default_rng(0), height // 4, width // 4, style="game")
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)).clamp_max(NUM_CLASSES - 1),
                                         NUM_CLASSES).permute(2, 0, 1).float()
    return torch.nn.functional.avg_pool2d(onehot[None], 5, 1, 2)[0] + 0.01


def measure_row(pipeline: SegmentationPipeline, writer: object, rgb: np.ndarray, scores: torch.Tensor, kind: str,
                reps: int) -> dict:
    """Median ms of every stage for one input size and kind."""
    from mfuser_ros.node.dds import CompressedImage_, Header_, Image_, Time_, to_dds_image

    height, width = rgb.shape[:2]
    header = Header_(Time_(1, 2), "camera_optical")
    if kind == "rgb8":
        msg_type = Image_
        wire = Image_(header, height, width, "rgb8", 0, width * 3, rgb).serialize()
    else:
        msg_type = CompressedImage_
        jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].reshape(-1)
        wire = CompressedImage_(header, "jpeg", jpeg).serialize()
    msg = msg_type.deserialize(wire)
    size = (height, width)
    net = network_size(height, width, BOX)
    small = resize_to_network(rgb, BOX)
    result = labels_from_lowres(scores, net, net, size)
    timing = FrameTiming()
    labels = OutputImage("mono8", result.labels)
    row = {
        "receive": median_ms(lambda: msg_type.deserialize(wire), reps),
        "decode": median_ms(lambda: message_to_rgb(msg), reps),
        "resize": median_ms(lambda: resize_to_network(rgb, BOX), reps),
        "preproc": median_ms(lambda: normalize(small), reps),
        "postproc": median_ms(lambda: labels_from_lowres(scores, net, net, size, with_confidence=False), reps),
        "+conf": median_ms(lambda: labels_from_lowres(scores, net, net, size), reps),
        "encode": median_ms(lambda: pipeline.encode(0, header, rgb, result, Wanted(), timing), reps),
        "+extras": median_ms(lambda: pipeline.encode(0, header, rgb, result, Wanted(True, True, True), timing), reps),
        "publish": median_ms(lambda: writer.write(to_dds_image(header, labels)), reps),
    }
    row["label path"] = sum(row[k] for k in ("receive", "decode", "resize", "preproc", "postproc", "encode",
                                             "publish"))
    return row


def stage_table(reps: int) -> None:
    """Print one row per input size and kind."""
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic

    from mfuser_ros.node.dds import Image_, dds_qos

    # A real DDS writer (loopback only, no reader): publish = message build + CDR serialization + Cyclone's write.
    dp = DomainParticipant(1 + os.getpid() % 200)
    writer = DataWriter(dp, Topic(dp, "rt/bench/mfuser/labels", Image_), qos=dds_qos("reliable", 1))
    pipeline = SegmentationPipeline(segmenter=None)
    columns = ["receive", "decode", "resize", "preproc", "postproc", "+conf", "encode", "+extras", "publish",
               "label path"]
    print(f"network input box {BOX[0]}x{BOX[1]} (network_image_width x network_image_height)")
    print(f"{'input':>16} " + " ".join(f"{c:>10}" for c in columns))
    for height, width in SIZES:
        rgb = scene(height, width)
        scores = scene_scores(*network_size(height, width, BOX))  # the network sees the network size
        for kind in ("rgb8", "jpeg"):
            row = measure_row(pipeline, writer, rgb, scores, kind, reps)
            print(f"{f'{width}x{height} {kind}':>16} " + " ".join(f"{row[c]:10.2f}" for c in columns))


def compressed_table(height: int, width: int, reps: int, png_level: int, jpeg_quality: int) -> None:
    """Bytes per frame and encode ms of every compressed output against its raw topic, at one size."""
    from mfuser_ros.node.dds import Header_, Time_, to_dds_compressed, to_dds_image

    config = NodeConfig()
    header = Header_(Time_(1, 2), "camera_optical")
    rgb, _ = render_scene(np.random.default_rng(1), height, width, style="game")
    net = network_size(height, width, BOX)
    labels = labels_from_lowres(scene_scores(*net), net, net, (height, width), with_confidence=False).labels
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    lut = palette_lut_bgr(SegmentationPipeline(segmenter=None).palette)
    color = labels_to_color_bgr(labels, lut)
    overlay = overlay_bgr(rgb, color, labels, config.overlay_alpha)
    png = encode_png_mono8(labels, png_level)
    decoded = cv2.imdecode(png.data, cv2.IMREAD_UNCHANGED)
    if decoded is None or not np.array_equal(decoded, labels):
        raise SystemExit("PNG labels did not round-trip exactly")
    make = {"labels": lambda: labels, "color": lambda: labels_to_color_bgr(labels, lut),
            "overlay": lambda: overlay_bgr(rgb, color, labels, config.overlay_alpha)}
    raw = {"labels": OutputImage("mono8", labels), "color": OutputImage("bgr8", color),
           "overlay": OutputImage("bgr8", overlay)}
    encoders = {"labels": (f"PNG level {png_level}", lambda: encode_png_mono8(labels, png_level)),
                "color": (f"JPEG q{jpeg_quality}", lambda: encode_jpeg_bgr8(color, jpeg_quality)),
                "overlay": (f"JPEG q{jpeg_quality}", lambda: encode_jpeg_bgr8(overlay, jpeg_quality))}
    print(f"compressed outputs at {width}x{height} (median ms over {reps}; bytes = the CDR message on the wire)")
    print(f"{'topic':>20} {'format':>12} {'bytes/frame':>12} {'of raw':>8} {'make':>8} {'encode':>8} {'serialize':>10}")
    for kind in ("labels", "color", "overlay"):
        make_ms = median_ms(make[kind], reps) if kind != "labels" else 0.0
        raw_bytes = len(to_dds_image(header, raw[kind]).serialize())
        raw_ser = median_ms(lambda k=kind: to_dds_image(header, raw[k]).serialize(), reps)
        print(f"{kind:>20} {raw[kind].encoding:>12} {raw_bytes:12,d} {'100 %':>8} {make_ms:8.2f} {0.0:8.2f} "
              f"{raw_ser:10.2f}")
        name, encode = encoders[kind]
        out = encode()
        enc_ms = median_ms(encode, reps)
        comp_bytes = len(to_dds_compressed(header, out).serialize())
        comp_ser = median_ms(lambda o=out: to_dds_compressed(header, o).serialize(), reps)
        print(f"{kind + '/compressed':>20} {name:>12} {comp_bytes:12,d} {100 * comp_bytes / raw_bytes:7.1f}% "
              f"{make_ms:8.2f} {enc_ms:8.2f} {comp_ser:10.2f}")


def _participant_pair(domain_id: int, out_topic: str, in_topic: str):
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from mfuser_ros.node.dds import Image_, dds_qos

    dp = DomainParticipant(domain_id)
    writer = DataWriter(dp, Topic(dp, out_topic, Image_), qos=dds_qos("reliable", 1))
    reader = DataReader(dp, Topic(dp, in_topic, Image_), qos=dds_qos("reliable", 1))
    return dp, writer, reader


def echo(domain_id: int, seconds: float) -> None:
    """Echo process: every Image_ on rt/bench/ping goes back on rt/bench/pong."""
    from cyclonedds.core import WaitSet
    from cyclonedds.sub import ReadCondition
    from cyclonedds.util import duration

    dp, writer, reader = _participant_pair(domain_id, "rt/bench/pong", "rt/bench/ping")
    waitset = WaitSet(dp)
    waitset.attach(ReadCondition(reader, 0xFFFF))  # any sample state
    print("echo ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        waitset.wait(duration(milliseconds=100))
        for sample in reader.take(N=10):
            writer.write(sample)


def round_trip(frames: int) -> None:
    from cyclonedds.core import WaitSet
    from cyclonedds.sub import ReadCondition
    from cyclonedds.util import duration

    from mfuser_ros.node.dds import Header_, Image_, Time_

    domain_id = 1 + os.getpid() % 200
    proc = subprocess.Popen([sys.executable, __file__, "--echo", str(domain_id)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        assert "ready" in proc.stdout.readline()
        dp, writer, reader = _participant_pair(domain_id, "rt/bench/ping", "rt/bench/pong")
        waitset = WaitSet(dp)
        waitset.attach(ReadCondition(reader, 0xFFFF))
        deadline = time.monotonic() + 20
        while writer.get_publication_matched_status().current_count == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        rgb = scene(480, 640)
        times = []
        for i in range(frames + 5):
            msg = Image_(Header_(Time_(0, i), "cam"), 480, 640, "rgb8", 0, 1920, rgb)
            t0 = time.perf_counter()
            writer.write(msg)
            got = None
            while got is None and time.perf_counter() - t0 < 2.0:
                waitset.wait(duration(milliseconds=100))
                for sample in reader.take(N=10):
                    if sample.header.stamp.nanosec == i:
                        got = sample
            if got is not None and i >= 5:  # first frames include discovery and allocation
                times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        print(f"DDS round trip 640x480 rgb8 (loopback, echo process): median {statistics.median(times):.2f} ms, "
              f"p95 {times[int(0.95 * (len(times) - 1))]:.2f} ms over {len(times)} frames "
              f"({frames + 5 - 5 - len(times)} lost)")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--no-dds", action="store_true")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage table")
    parser.add_argument("--compressed-size", default="1920x1080", help="WIDTHxHEIGHT of the compressed-output table "
                        "(empty: skip it)")
    parser.add_argument("--png-level", type=int, default=NodeConfig().png_level)
    parser.add_argument("--jpeg-quality", type=int, default=NodeConfig().jpeg_quality)
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    from mfuser_ros.node.dds import loopback_uri

    os.environ["CYCLONEDDS_URI"] = loopback_uri()  # this benchmark never needs traffic off the host
    if args.echo is not None:
        echo(args.echo, 120.0)
        return
    print(f"node overhead per frame (median ms over {args.reps}), torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs")
    if not args.no_stages:
        stage_table(args.reps)
    if args.compressed_size:
        width, height = (int(v) for v in args.compressed_size.split("x"))
        compressed_table(height, width, args.reps, args.png_level, args.jpeg_quality)
    if not args.no_dds:
        round_trip(args.frames)


if __name__ == "__main__":
    main()
