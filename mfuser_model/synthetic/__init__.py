"""Procedural street scenes with exact labels: data for tests, demos and domain-shift checks, not part of the model.

It lives in the core library because training (dataset writers, ``training.synthetic``) and the ROS side (the demo
drive bag, ``mfuser_ros.replay.demo_bag``) both draw from it and neither may import the other.

- ``canvas``: the camera, draw buffers, primitives and palettes.
- ``street_objects``: ground, buildings, trees, poles, vehicles, people, skyline.
- ``styles``: game, day, night, fog, rain and texture looks.
- ``scenes``: the street layout and ``render_scene``.
"""
