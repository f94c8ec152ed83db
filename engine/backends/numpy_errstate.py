"""numpy's floating-point error state set once per hot call (the numpy backend's ops run under "ignore")."""
from __future__ import annotations

import numpy as np

# np.errstate(all="ignore") costs microseconds per op (its Python __enter__/__exit__ build the error
# state each time); the hot paths set numpy's error-state context variable to one state built once.
# Private numpy names (numpy >= 2): without them, the public context manager does the same.
try:
    from numpy._core._ufunc_config import _extobj_contextvar as _ERR_VAR
    from numpy._core._ufunc_config import _make_extobj
    _ERR_IGNORE = _make_extobj(all="ignore")
except (ImportError, AttributeError, TypeError):
    _ERR_VAR = None


def _quiet(fn, *args, **kwargs):
    """fn(*args, **kwargs) under np.errstate(all="ignore")."""
    if _ERR_VAR is None:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    token = _ERR_VAR.set(_ERR_IGNORE)
    try:
        return fn(*args, **kwargs)
    finally:
        _ERR_VAR.reset(token)
