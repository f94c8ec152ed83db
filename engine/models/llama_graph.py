"""CUDA-graph decode for LLaMA-shaped models (LLaMA, Mistral, Qwen2-without-bias): a speed transform
that sits beside engine/models/llama.py and reads the same HF-named weights.

The host leaves the loop: the KV cache is static, token and position live on the device, greedy
sampling runs on the device, and one decode step (embed -> layers -> norm -> lm_head -> argmax) is
captured once as a CUDA graph and replayed. cupy refuses cuBLAS during capture, so the step uses the
fused kernels of engine/backends/cupy_kernels.py only (GEMV, rotary + KV write, split attention).
Prefill runs uncaptured with cuBLAS GEMMs and writes the same cache.

`run_step(captured=False)` launches the same kernels without the graph: the graph path must equal it
token for token (tests/test_cuda_graph.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cupy
import numpy as np

from engine.backends import cupy_kernels as K


@dataclass
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    sliding_window: int = 0  # 0: full attention

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], heads,
                   cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   cfg["vocab_size"], cfg.get("rms_norm_eps", 1e-6), cfg.get("sliding_window") or 0)


def fuse_weights(get, shape: Shape, n_layers: int | None = None):
    """Per layer: qkv [(Hq + 2Hkv) * D, H] and gate_up [2I, H] as single buffers (the decode GEMVs
    read each once). `get(name)` returns a cupy array for an HF key. Returns (layers, globals)."""
    layers = []
    for i in range(shape.num_hidden_layers if n_layers is None else n_layers):
        p = f"model.layers.{i}."
        layers.append({
            "qkv": cupy.concatenate([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
            "o": get(p + "self_attn.o_proj.weight"),
            "gate_up": cupy.concatenate([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
            "down": get(p + "mlp.down_proj.weight"),
            "ln1": get(p + "input_layernorm.weight"),
            "ln2": get(p + "post_attention_layernorm.weight"),
        })
    glob = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    try:
        glob["lm_head"] = get("lm_head.weight")
    except KeyError:  # tied embeddings
        glob["lm_head"] = glob["embed"]
    return layers, glob


class GraphDecoder:
    """Batch-1 greedy decoder. cos/sin: float32 [max_seq, head_dim/2] rotary tables (from the model's
    rotary module, so every rope-scaling variant is honoured)."""

    def __init__(self, layers, glob, shape: Shape, cos, sin, max_seq: int, chunk: int = K.ATTN_CHUNK):
        self.layers, self.g, self.s = layers, glob, shape
        self.dtype = glob["embed"].dtype
        self.max_seq, self.chunk = max_seq, chunk
        s, dt = shape, self.dtype
        self.cos = cupy.ascontiguousarray(cupy.asarray(cos, dtype=cupy.float32)[:max_seq])
        self.sin = cupy.ascontiguousarray(cupy.asarray(sin, dtype=cupy.float32)[:max_seq])
        kv = (s.num_key_value_heads, max_seq, s.head_dim)
        self.k_cache = [cupy.zeros(kv, dt) for _ in layers]
        self.v_cache = [cupy.zeros(kv, dt) for _ in layers]
        hq, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        # static buffers: everything one step touches
        self.tok = cupy.zeros(1, cupy.int32)
        self.pos = cupy.zeros(1, cupy.int32)
        self.step_i = cupy.zeros(1, cupy.int32)
        self.x = cupy.zeros(s.hidden_size, dt)
        self.x2 = cupy.zeros(s.hidden_size, dt)
        self.qkv = cupy.zeros((hq + 2 * hkv) * d, dt)
        self.q = cupy.zeros(hq * d, dt)
        self.attn = cupy.zeros(hq * d, dt)
        self.part = cupy.zeros((hq, -(-max_seq // chunk), d + 2), cupy.float32)
        self.gu = cupy.zeros(2 * s.intermediate_size, dt)
        self.logits = cupy.zeros(s.vocab_size, cupy.float32)
        self.out_tokens = cupy.zeros(max_seq, cupy.int32)
        self.graph = None
        self.stream = cupy.cuda.Stream(non_blocking=True)

    # ---- one decode step from fused kernels ----------------------------------------------------
    def _step(self):
        s, eps = self.s, self.s.rms_norm_eps
        K.embed(self.g["embed"], self.tok, self.x)
        for i, L in enumerate(self.layers):
            K.gemv(L["qkv"], self.x, self.qkv, mode=1, norm_weight=L["ln1"], eps=eps)
            K.rope_kv(self.qkv, self.pos, self.cos, self.sin, self.q, self.k_cache[i], self.v_cache[i],
                      s.num_attention_heads, s.num_key_value_heads, s.head_dim)
            K.attention(self.q, self.k_cache[i], self.v_cache[i], self.pos, self.part, self.attn,
                        s.num_attention_heads, s.num_key_value_heads, s.head_dim, self.chunk, s.sliding_window)
            K.gemv(L["o"], self.attn, self.x2, residual=self.x)  # x2 = x + o_proj(attn)
            K.gemv(L["gate_up"], self.x2, self.gu, mode=1, norm_weight=L["ln2"], eps=eps)
            K.gemv(L["down"], self.gu, self.x, mode=2, residual=self.x2)  # x = x2 + down(silu(g) * u)
        K.gemv(self.g["lm_head"], self.x, self.logits, mode=1, norm_weight=self.g["norm"], eps=eps)
        K.argmax_advance(self.logits, self.tok, self.out_tokens, self.step_i, self.pos)

    def capture(self):
        """Capture one step as a CUDA graph (kernels are compiled by a warm-up step first)."""
        with self.stream:
            self.stream.begin_capture()
            try:
                self._step()
            finally:
                self.graph = self.stream.end_capture()
        return self.graph

    def run_step(self, captured: bool = True):
        with self.stream:
            if captured:
                if self.graph is None:
                    raise RuntimeError("capture() first")
                self.graph.launch(self.stream)
            else:
                self._step()

    # ---- prefill (uncaptured, cuBLAS) -------------------------------------------------------------
    def prefill(self, ids) -> cupy.ndarray:
        """Run the prompt, fill the caches, set token/position for decoding; returns the prompt's
        logits [T, V] in float32 (teacher-forced, for parity checks)."""
        s, dt = self.s, self.dtype
        ids = cupy.asarray(np.asarray(ids, dtype=np.int64))
        T = ids.shape[0]
        if T > self.max_seq:
            raise ValueError(f"prompt of {T} tokens exceeds the cache of {self.max_seq}")
        hq, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        x = self.g["embed"][ids]  # (T, H)
        cos, sin = self.cos[:T], self.sin[:T]
        causal = cupy.tril(cupy.ones((T, T), dtype=bool))
        if s.sliding_window:
            causal &= ~cupy.tril(cupy.ones((T, T), dtype=bool), -s.sliding_window)
        for i, L in enumerate(self.layers):
            h = _rms(x, L["ln1"], s.rms_norm_eps)
            qkv = _linear(h, L["qkv"])  # (T, (Hq + 2Hkv) * D)
            q = qkv[:, :hq * d].reshape(T, hq, d)
            k = qkv[:, hq * d:(hq + hkv) * d].reshape(T, hkv, d)
            v = qkv[:, (hq + hkv) * d:].reshape(T, hkv, d)
            q, k = _rope(q, cos, sin).astype(dt), _rope(k, cos, sin).astype(dt)
            self.k_cache[i][:, :T] = k.transpose(1, 0, 2)
            self.v_cache[i][:, :T] = v.transpose(1, 0, 2)
            rep = hq // hkv
            kh = cupy.repeat(k.transpose(1, 0, 2), rep, axis=0)  # (Hq, T, D)
            vh = cupy.repeat(v.transpose(1, 0, 2), rep, axis=0)
            sc = (q.transpose(1, 0, 2).astype(cupy.float32) @ kh.transpose(0, 2, 1).astype(cupy.float32))
            sc = cupy.where(causal, sc / math.sqrt(d), -cupy.inf)
            p = cupy.exp(sc - sc.max(-1, keepdims=True))
            p = (p / p.sum(-1, keepdims=True)).astype(dt)
            o = (p.astype(cupy.float32) @ vh.astype(cupy.float32)).astype(dt)
            o = o.transpose(1, 0, 2).reshape(T, hq * d)  # (T, Hq * D)
            x = x + _linear(o, L["o"])
            h = _rms(x, L["ln2"], s.rms_norm_eps)
            gu = _linear(h, L["gate_up"])
            g, u = gu[:, :s.intermediate_size], gu[:, s.intermediate_size:]
            act = (g.astype(cupy.float32) / (1 + cupy.exp(-g.astype(cupy.float32)))).astype(dt) * u
            x = x + _linear(act, L["down"])
        logits = _linear(_rms(x, self.g["norm"], s.rms_norm_eps), self.g["lm_head"], out_dtype=cupy.float32)
        self.tok[0] = int(cupy.argmax(logits[-1]))
        self.pos[0] = T
        self.step_i[0] = 0
        return logits

    def generate(self, ids, max_new_tokens: int, captured: bool = True) -> list:
        """Greedy tokens after the prompt: the first from prefill, the rest from replayed steps."""
        self.prefill(ids)
        T = len(ids)
        if T + max_new_tokens > self.max_seq:
            raise ValueError(f"{T} + {max_new_tokens} tokens exceed the cache of {self.max_seq}")
        first = int(self.tok[0])
        if captured and self.graph is None:
            self.run_step(captured=False)  # compile kernels outside capture, then rewind
            self.pos[0], self.step_i[0], self.tok[0] = T, 0, first
            self.capture()
        for _ in range(max_new_tokens - 1):
            self.run_step(captured)
        self.stream.synchronize()
        return [first] + self.out_tokens[:max_new_tokens - 1].get().tolist()


_CUDA_TYPE = {"float16": 2, "bfloat16": 14, "float32": 0}


def _linear(x, W, out_dtype=None):
    """x (T, K) @ W(N, K).T through cublasGemmEx with float32 accumulation: cupy's matmul has no
    bfloat16 path, and this also keeps fp16 on the tensor cores."""
    from cupy_backends.cuda.libs import cublas
    T, Kd = x.shape
    N = W.shape[0]
    x = cupy.ascontiguousarray(x)
    out = cupy.empty((T, N), out_dtype or x.dtype)
    alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    cublas.gemmEx(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, N, T, Kd, alpha.ctypes.data,
                  W.data.ptr, _CUDA_TYPE[W.dtype.name], Kd, x.data.ptr, _CUDA_TYPE[x.dtype.name], Kd,
                  beta.ctypes.data, out.data.ptr, _CUDA_TYPE[out.dtype.name], N, 68, -1)  # 68: COMPUTE_32F
    return out


def _rms(x, w, eps):
    """HF LlamaRMSNorm: normalise in float32, round to the model dtype, then scale by the weight."""
    xf = x.astype(cupy.float32)
    y = (xf * cupy.reciprocal(cupy.sqrt((xf * xf).mean(-1, keepdims=True) + eps))).astype(x.dtype)
    return w * y


def _rope(x, cos, sin):
    """x (T, H, D), cos/sin (T, D/2): HF rotate_half layout, computed in float32."""
    half = x.shape[-1] // 2
    xf = x.astype(cupy.float32)
    a, b = xf[..., :half], xf[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return cupy.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def rope_tables(inv_freq: np.ndarray, max_seq: int, attention_scaling: float = 1.0):
    """cos/sin [max_seq, D/2] from an inverse-frequency vector (as transformers computes it)."""
    t = np.arange(max_seq, dtype=np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    return (np.cos(t) * attention_scaling).astype(np.float32), (np.sin(t) * attention_scaling).astype(np.float32)
