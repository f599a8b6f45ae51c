"""Deployment of the decode head: ONNX export, TensorRT engines, runtime backends and ``mfuser-export``.

- ``onnx_export``: the final-stage decoder as an ONNX graph, and reading an ONNX file's inputs and outputs.
- ``tensorrt_engine``: engine build (cached, keyed by ONNX digest, TensorRT version, GPU, precision, shapes) and run.
- ``decoder_backends``: torch, onnxruntime or TensorRT behind the head's call signature; ``build_segmenter``.
- ``cli``: the ``mfuser-export`` command.

Dependencies run one way: this package imports ``mfuser_model.inference`` and the network, never the reverse.
"""
