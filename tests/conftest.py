"""Shared fixtures and markers for the engine-core tests.

Markers (registered here so `--strict-markers` works without touching pyproject):
  parity  one op-parity row against torch; every test in tests/test_ops*.py gets it unless it is
          marked `nonparity`. Count them: `pytest -m parity --collect-only -q | tail -1`, or read the
          "parity rows" line this file adds to the terminal summary.
  cuda    needs the CUDA device: skipped unless ENGINE_DEVICE=cuda and cupy + a GPU are present.

The device under test is engine.default_device() (ENGINE_DEVICE, "cpu" when unset). With
ENGINE_DEVICE=cuda and no cupy, the engine test modules skip with the reason from helpers.
"""
from __future__ import annotations

import os
import sys

import pytest
from hypothesis import settings

settings.register_profile("engine", max_examples=150, deadline=None)
settings.register_profile("engine-deep", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "engine"))

sys.path.insert(0, os.path.dirname(__file__))

from helpers import DEVICE, device_skip_reason  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: one op-parity row against torch (see tests/conftest.py)")
    config.addinivalue_line("markers", "nonparity: a test in test_ops*.py that is not a torch-parity row")
    config.addinivalue_line("markers", "cuda: needs a CUDA device (run with ENGINE_DEVICE=cuda)")


def pytest_collection_modifyitems(config, items):
    reason = device_skip_reason()
    for item in items:
        fname = os.path.basename(str(item.fspath))
        if fname.startswith("test_ops") and not item.get_closest_marker("nonparity"):
            item.add_marker(pytest.mark.parity)
        if item.get_closest_marker("cuda"):
            if DEVICE.type != "cuda":
                item.add_marker(pytest.mark.skip(reason="GPU-only test: set ENGINE_DEVICE=cuda on a machine with cupy"))
            elif reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    items = getattr(terminalreporter, "_session", None)
    items = getattr(items, "items", None) or []
    rows = [i for i in items if i.get_closest_marker("parity")]
    if rows:
        funcs = {(i.fspath, i.originalname) for i in rows}
        terminalreporter.write_line(f"parity rows on {DEVICE}: {len(rows)} cases from {len(funcs)} op rows")


@pytest.fixture
def exact_dot_route(monkeypatch):
    """On CUDA, the quantized GEMVs' float dot route (cupy_quant.QUANT_DOT): the dequantise-then-matmul sums within
    fp32 rounding, for tests that compare quantized models at fp32 tolerance (the default int8 route quantises x
    per 32, as llama.cpp's mmvq, and moves logits by ~1% of their range)."""
    if DEVICE.type == "cuda":
        from engine.backends import cupy_quant
        monkeypatch.setitem(cupy_quant.QUANT_DOT, "route", "float")


@pytest.fixture
def device():
    """The engine device under test; skips when it cannot run here."""
    reason = device_skip_reason()
    if reason:
        pytest.skip(reason)
    return DEVICE


@pytest.fixture(scope="session")
def tiny():
    """Real asv results of the tiny suite (several runs in a temp git repo), shared by the report,
    gate and dashboard tests."""
    from helpers import asv_tiny_harness
    return asv_tiny_harness().runs()
