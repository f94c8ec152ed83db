"""Benchmarks that misbehave on purpose, for the runner's tests (tests/test_bench_runner.py): each
`mode` of Faults.time_mode does one thing a real benchmark may do. TAPER_FAULT_VALUE sets what
Values.track_value returns (so that two runs can be told apart); TAPER_FAULT_SLEEP makes each
Values parameter set sleep that long (so that a run can be killed in the middle)."""
import os
import signal
import time


class Faults:
    params = [["ok", "raises", "hangs_in_c", "killed", "skip"]]
    param_names = ["mode"]
    timeout = 2.0
    number, repeat, rounds, warmup_time = 1, 1, 1, 0.0

    def setup(self, mode):
        if mode == "skip":
            raise NotImplementedError("skipped on purpose")

    def time_mode(self, mode):
        if mode == "raises":
            raise ValueError("failed on purpose")
        if mode == "hangs_in_c":
            sum(range(10**15))  # one C call: no signal handler runs until it returns
        if mode == "killed":
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


class Values:
    params = [list(range(6))]
    param_names = ["i"]
    timeout = 30.0

    def track_value(self, i):
        time.sleep(float(os.environ.get("TAPER_FAULT_SLEEP", "0")))
        return float(os.environ.get("TAPER_FAULT_VALUE", "42")) + i
    track_value.unit = "things"
