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

from dataclasses import dataclass

import cupy
import numpy as np

from engine.backends import cupy_kernels as K
from engine.backends import cupy_prefill as P


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
    """Per layer: qkv [(Hq + 2Hkv) * D, H] and gate_up [2I, H] (gate and up rows interleaved, so one
    GEMV epilogue applies silu(gate) * up) as single buffers: each decode GEMV reads them once. `get(name)` returns a cupy array for an HF key. Returns (layers, globals)."""
    layers = []
    for i in range(shape.num_hidden_layers if n_layers is None else n_layers):
        p = f"model.layers.{i}."
        layers.append({
            "qkv": cupy.concatenate([get(p + f"self_attn.{n}_proj.weight") for n in "qkv"]),
            "o": get(p + "self_attn.o_proj.weight"),
            "gate_up": K.interleave_glu(get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")),
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
        self.act = cupy.zeros(s.intermediate_size, dt)
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
            K.gemv(L["gate_up"], self.x2, self.act, mode=1, norm_weight=L["ln2"], eps=eps, glu=True)
            K.gemv(L["down"], self.act, self.x, residual=self.x2)  # x = x2 + down(silu(gate) * up)
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
    def prefill(self, ids, all_logits: bool = False) -> cupy.ndarray:
        """Run the prompt, fill the caches and set token/position for decoding. Returns float32
        logits of the last position [V], or of every position [T, V] with all_logits (for parity)."""
        s = self.s
        ids = cupy.asarray(np.asarray(ids, dtype=np.int64))
        T = ids.shape[0]
        if not 0 < T <= self.max_seq:
            raise ValueError(f"prompt of {T} tokens does not fit the cache of {self.max_seq}")
        hq, hkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        x = self.g["embed"][ids]  # (T, H): the residual stream, updated in place by the GEMMs
        for i, L in enumerate(self.layers):
            qkv = P.linear(P.rms_rows(x, L["ln1"], s.rms_norm_eps), L["qkv"])  # (T, (Hq + 2Hkv) * D)
            q = P.rope_rows(qkv, self.cos, self.sin, self.k_cache[i], self.v_cache[i], 0, hq, hkv, d)  # (Hq, T, D)
            o = P.attention(q, self.k_cache[i], self.v_cache[i], 0, s.sliding_window, d ** -0.5)  # (T, Hq * D)
            P.linear(o, L["o"], out=x, accumulate=True)  # x += o_proj(o)
            gu = P.linear(P.rms_rows(x, L["ln2"], s.rms_norm_eps), L["gate_up"])  # (T, 2I) interleaved
            P.linear(P.glu_rows(gu), L["down"], out=x, accumulate=True)  # x += down(silu(gate) * up)
        last = x if all_logits else x[-1:]
        logits = P.linear(P.rms_rows(last, self.g["norm"], s.rms_norm_eps), self.g["lm_head"], out_dtype=cupy.float32)
        self.tok[0] = cupy.argmax(logits[-1]).astype(cupy.int32)
        self.pos[0] = T
        self.step_i[0] = 0
        return logits if all_logits else logits[0]

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


def rope_tables(inv_freq: np.ndarray, max_seq: int, attention_scaling: float = 1.0):
    """cos/sin [max_seq, D/2] from an inverse-frequency vector (as transformers computes it)."""
    t = np.arange(max_seq, dtype=np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    return (np.cos(t) * attention_scaling).astype(np.float32), (np.sin(t) * attention_scaling).astype(np.float32)
