"""MFuser: the network, its ops, weights I/O, inference, metrics and export. Imports neither ROS nor training.

The tree (dependencies run down this list, never up):
- ``network/``: the nn.Modules, in the order the data flows (encoders, mvfuser, backbone, text, context_decoder,
  position_encoding, pixel_decoder, decode_head, mfuser). ``ops/``: selective scan and deformable attention.
- ``weights/``: public backbone checkpoints and the authors' released MFuser checkpoints, ``mfuser-convert``.
- ``config``, ``config_io``, ``checkpoint``: model presets, strict dataclass configs, whole-model files.
- ``inference``: ``Segmenter`` (numpy RGB in, uint8 labels and confidence out; whole or sliding window).
- ``metrics``, ``classes``: the confusion matrix and mIoU used by training and replay alike; class names, palette.
- ``deploy/``: the decoder as ONNX and TensorRT, runtime decoder backends, ``mfuser-export``.
- ``synthetic/``: procedural street scenes with exact labels (test and demo data, not part of the model).

Import the module you need; this package imports nothing heavy on its own.
"""
