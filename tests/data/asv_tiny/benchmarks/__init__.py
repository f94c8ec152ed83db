"""The tiny asv suite used by tests/test_reports.py and tests/test_gate.py."""
