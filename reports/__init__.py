"""Benchmark results -> pandas -> tables, charts, an HTML dashboard and a regression gate.

Modules
-------
results    load asv results directories (one or many machines) into one tidy DataFrame
units      the one table of units and their direction (unknown: an error); human units
roles      which implementation is the candidate and which are raw-array baselines
compare    every implementation side by side; the candidate's ratio to the best other and each
summary    headline per model, verdict per suite, regressions between commits, contradictions
plots      PNG charts: ratio bars with intervals, tokens/s against a roofline, memory, history
dashboard  report.md + index.html (+ optional asv publish), used by `taper report`
stats      asv's Mann-Whitney U rule (asv's own code when importable, an exact copy otherwise)
drift      compare two `taper verify` parity JSON files layer by layer
asvrun     run asv in the current checkout or a temporary git worktree of a ref
gateconfig read and check gate.toml
gate       the regression gate behind `taper gate`; thresholds come from gate.toml

Running the benchmarks
----------------------
Quick run in the current interpreter (no virtualenv build), results saved under results/::

    asv machine --yes                  # once per box: writes ~/.asv-machine.json
    asv run -E existing --set-commit-hash $(git rev-parse HEAD) --record-samples

asv 0.6 saves nothing from an existing environment without ``--set-commit-hash``. Adding
``--python=same`` to this command makes asv 0.6.6 run every benchmark twice with this config (a
second environment of the same name; the second run overwrites the first). ``--record-samples``
keeps the raw samples the gate's U test needs; ``--quick`` runs each benchmark once, enough for a
report but not for the gate. ``--launch-method forkserver`` imports the suite once and forks per
parameter set (about 5x faster than asv's default spawn for small benchmarks), so it must not touch
the GPU at import time.
Nightly history over git commits uses the virtualenv matrix of asv.conf.json::

    asv run NEW --record-samples       # or a range: asv run main~20..main

then ``taper report --results results [other-box-results] --out html-report [--asv-publish]`` and
``taper gate BASE HEAD``.

Environment sidecar
-------------------
asv's machine.json knows the machine name, cpu, ram, os and arch but not the accelerator. A
benchmark run may write ``results/<machine>/taper-env.json`` beside machine.json (see
results.write_env_sidecar)::

    {"card": "NVIDIA H100 80GB HBM3", "driver": "550.54.15",
     "clocks": "sm 1980 MHz, mem 2619 MHz", "cpu": "AMD EPYC 9454 48-Core"}

Every key is optional and may be null; other keys are an error. ``card``, ``driver`` and ``clocks``
become DataFrame columns of the same names; ``cpu``, when set, overrides machine.json's cpu. One
sidecar per machine directory describes every result in it, so a box whose card or driver changes
should get a new asv machine name.

Conventions relied on
---------------------
Benchmarks have ``params``/``param_names`` including ``impl`` and ``device``. Times are seconds;
track_ values carry a ``unit`` whose direction is written in units.UNITS (asv itself calls every
value lower-is-better; a unit not in the table is an error for the gate and has no ratio in the
dashboard); ``ms_per_token`` is shown as tokens/s; a benchmark whose name contains "roofline" is a
reference line (tokens/s or ms per token) and is not compared.
"""
