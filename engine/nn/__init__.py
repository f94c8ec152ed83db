"""engine.nn: Module and layers, one file per kind, with torch's names and state-dict layouts."""
from engine.nn.module import Module, ModuleDict, ModuleList, Sequential, StateDictError  # noqa: F401
from engine.nn.activation import GELU, Dropout, Flatten, Identity, ReLU, Sigmoid, SiLU, Softmax, Tanh  # noqa: F401
from engine.nn.batchnorm import BatchNorm1d, BatchNorm2d, GroupNorm  # noqa: F401
from engine.nn.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d  # noqa: F401
from engine.nn.kv_cache import CacheFullError, KVCache, SlidingWindowCache  # noqa: F401
from engine.nn.linear import Embedding, Linear  # noqa: F401
from engine.nn.mha import MultiheadAttention  # noqa: F401
from engine.nn.norm import LayerNorm, RmsNorm  # noqa: F401
from engine.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, Upsample  # noqa: F401
from engine.nn.rnn import LSTM  # noqa: F401
from engine.nn.rotary import RotaryEmbedding  # noqa: F401
from engine.nn.varbuilder import VarBuilder  # noqa: F401
