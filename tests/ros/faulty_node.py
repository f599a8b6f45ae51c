"""``mfuser-node`` whose model call raises an error no frame can cause (a KeyError): an injected bug.

Tests run it as ``python tests/ros/faulty_node.py <mfuser-node arguments>`` to check that a worker thread that dies
is fatal and visible (an ERROR status, then exit status 1) on both transports. Everything but the model call is the
real node; no network weights are built, so it starts fast.
"""

from __future__ import annotations

import sys

from mfuser_model.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from mfuser_ros.node import model_loader
from mfuser_ros.node.pipeline import SegmentationPipeline


class InjectedBug:
    """A segmenter with a bug: every call raises KeyError."""

    def segment_batch(self, images, output_sizes=None, *, with_confidence=True):
        raise KeyError("injected bug")


def load_model(config):
    pipeline = SegmentationPipeline.from_config(config, InjectedBug())
    return model_loader.LoadedModel(pipeline, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, config.device)


model_loader.load_model = load_model  # before cli imports the transports, so both bind this one

if __name__ == "__main__":
    from mfuser_ros.node.cli import main

    sys.exit(main(sys.argv[1:]))
