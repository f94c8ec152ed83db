"""engine.nn: Module and layers. Layers live in one file per kind (linear.py, norm.py, conv.py, ...);
import them from there, or from here once re-exported below."""
from engine.nn.module import Module, ModuleDict, ModuleList, Sequential, StateDictError  # noqa: F401
