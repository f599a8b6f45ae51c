"""MFuser: the network, its ops, weights I/O, inference, metrics and export. Imports neither ROS nor training.

Entry points (import the module you need; this package imports nothing heavy on its own):
- ``mfuser_model.checkpoint``: ``build_model(preset=..., checkpoint=...)``, ``load_model``, ``save_model``.
- ``mfuser_model.inference``: ``Segmenter`` (numpy RGB in, uint8 labels and confidence out; whole or sliding window).
- ``mfuser_model.mfuser``: the ``MFuser`` module; ``backbone``, ``mvfuser``, ``context_decoder``, ``decode_head``
  its parts; ``ops.selective_scan`` the scan with CUDA, native CPU and pure-PyTorch backends.
- ``mfuser_model.weights``: public backbone checkpoints and the authors' released MFuser checkpoints.
- ``mfuser_model.metrics``: the confusion matrix and mIoU used by training and replay alike.
- ``mfuser_model.export`` / ``decoder_backends`` / ``tensorrt_engine``: the decoder as ONNX and TensorRT.
"""
