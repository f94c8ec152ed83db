"""The "code under test" of the tiny asv suite: how much slower the engine is than it should be.

The benchmarks import this module through ASV_PYTHONPATH, like suites/ import the real engine, so a
commit that changes SLOWDOWN plants a regression that `taper gate BASE_REF HEAD_REF` must find. The
environment variable TAPER_TINY_SLOWDOWN overrides it for runs on one checkout.
"""
import os

SLOWDOWN = float(os.environ.get("TAPER_TINY_SLOWDOWN", "1"))
