"""Offline training and evaluation of MFuser: datasets in their download layouts, augmentation, rare-class sampling,
synthetic scenes, losses, the trainer (``mfuser-train``) and multi-target evaluation (``mfuser-eval``).
Imports ``mfuser_model``, never ``mfuser_ros``.
"""
