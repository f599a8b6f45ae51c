"""The CPU thread policy (mfuser_model.threads): how a count is chosen and what applying it sets.

Applying changes process-wide state (torch's pools, OpenMP's environment), so those checks run in a fresh
interpreter, where torch is not yet imported, as in every command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mfuser_model.errors import ConfigError
from mfuser_model.threads import DEFAULT_THREADS, available_cpus, resolve_threads


def test_an_explicit_count_wins_and_zero_means_every_cpu(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert resolve_threads(3) == (3, "option")
    assert resolve_threads(0) == (available_cpus(), "all CPUs")
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_no_count_follows_omp_num_threads_else_the_shared_machine_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert resolve_threads(None) == (4, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's nested form: the outer pool counts
    assert resolve_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(None) == (DEFAULT_THREADS, "default")
    assert DEFAULT_THREADS == 1


@pytest.mark.parametrize(("threads", "env", "message"), [
    (-1, "", "threads: -1 must be an integer >= 0"),
    (True, "", "threads: True must be an integer"),
    (None, "lots", "OMP_NUM_THREADS='lots' is not a positive integer"),
    (None, "0", "OMP_NUM_THREADS='0' is not a positive integer"),
])
def test_bad_counts_are_refused_naming_the_value(monkeypatch, threads, env, message):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    if not env:
        monkeypatch.delenv("OMP_NUM_THREADS")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_threads(threads)


_PROBE = """
import json, os, sys
from mfuser_model.threads import apply_threads
settings = apply_threads(int(sys.argv[1]))
import cv2, torch
print(json.dumps({"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                  "cv2": cv2.getNumThreads(), "omp": os.environ.get("OMP_NUM_THREADS"),
                  "wait": os.environ.get("OMP_WAIT_POLICY"), "passive": settings.passive_wait,
                  "line": settings.describe()}))
"""


def _probe(threads: int, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], capture_output=True, text=True,
                            env={**environ, **env}, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_applying_before_torch_sets_every_pool_and_a_passive_wait():
    got = _probe(2)
    assert (got["torch"], got["interop"], got["cv2"], got["omp"]) == (2, 1, 2, "2")
    assert got["wait"] == "PASSIVE" and got["passive"] is True
    assert got["line"].startswith("threads 2 of ")


def test_a_wait_policy_the_user_chose_is_kept_and_one_thread_sets_none():
    got = _probe(1, OMP_WAIT_POLICY="ACTIVE")
    assert (got["torch"], got["cv2"], got["omp"], got["wait"], got["passive"]) == (1, 1, "1", "ACTIVE", False)
