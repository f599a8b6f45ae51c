"""``mfuser-node``: configuration errors exit with code 2 and a message naming the parameter."""

from __future__ import annotations

import yaml

from mfuser_ros.node.cli import main


def test_invalid_parameter_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"overlay_alpha": 3.0}}}), encoding="utf-8")
    assert main(["--transport", "dds", "--config", str(path)]) == 2
    assert "overlay_alpha" in capsys.readouterr().err


def test_unknown_command_line_parameter_exits_2_naming_it(capsys):
    assert main(["--transport", "dds", "-p", "max_bach=2"]) == 2
    assert "max_bach" in capsys.readouterr().err


def test_no_checkpoint_is_refused_before_the_model_loads_naming_the_overrides(capsys):
    assert main(["--transport", "dds", "-p", "checkpoint=''", "-p", "image_topics=[cam/image_raw]"]) == 2
    err = capsys.readouterr().err
    assert "random weights" in err and "allow_random_weights:=true" in err and "Traceback" not in err


def test_ros_spelling_of_a_parameter_is_taken(capsys):
    # The refusal above (shared with the rclpy node) spells overrides as ROS does, NAME:=VALUE: mfuser-node must
    # take that spelling too, not report an unknown key 'checkpoint:'.
    assert main(["--transport", "dds", "-p", "checkpoint:=''", "-p", "image_topics:=[cam/image_raw]"]) == 2
    err = capsys.readouterr().err
    assert "unknown key" not in err and "random weights" in err, err
