# Type stub of the C extension built from lpu_runtime/csrc/lpu_kernels.c; use it through lpu_runtime.native.
import numpy as np
from numpy.typing import NDArray

def gemm_s8s8_s32(a: NDArray[np.int8], b: NDArray[np.int8], out: NDArray[np.int32], /) -> None: ...
def linear_s8(
    x_q: NDArray[np.int8],
    x_scale: NDArray[np.float32],
    w: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    bias: NDArray[np.float32] | None,
    out: NDArray[np.float32],
    /,
) -> None: ...
def linear_s8_multi(
    x_q: NDArray[np.int8],
    x_scale: NDArray[np.float32],
    ws: list[NDArray[np.int8]] | tuple[NDArray[np.int8], ...],
    w_scales: list[NDArray[np.float32]] | tuple[NDArray[np.float32], ...],
    biases: list[NDArray[np.float32] | None] | tuple[NDArray[np.float32] | None, ...],
    outs: list[NDArray[np.float32]] | tuple[NDArray[np.float32], ...],
    /,
) -> None: ...
def quantize_rows(
    x: NDArray[np.float32], q_out: NDArray[np.int8], scale_out: NDArray[np.float32], /
) -> None: ...
def rmsnorm_quantize(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    eps: float,
    q_out: NDArray[np.int8],
    scale_out: NDArray[np.float32],
    /,
) -> None: ...
def rmsnorm(
    x: NDArray[np.float32], weight: NDArray[np.float32], eps: float, out: NDArray[np.float32], /
) -> None: ...
def silu_mul_quantize(
    g: NDArray[np.float32], u: NDArray[np.float32], q_out: NDArray[np.int8], scale_out: NDArray[np.float32], /
) -> None: ...
def attention(
    q: NDArray[np.float32],
    k_cache: NDArray[np.float16],
    v_cache: NDArray[np.float16],
    seq_rows: NDArray[np.int64],
    seq_start_pos: NDArray[np.int64],
    slot_offsets: NDArray[np.int64],
    slots: NDArray[np.int64],
    out: NDArray[np.float32],
    /,
) -> None: ...
def kv_store(
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    k_cache: NDArray[np.float16],
    v_cache: NDArray[np.float16],
    slots: NDArray[np.int64],
    /,
) -> None: ...
def rope_inplace(
    x: NDArray[np.float32],
    positions: NDArray[np.int64],
    cos: NDArray[np.float32],
    sin: NDArray[np.float32],
    /,
) -> None: ...
def set_num_threads(n: int, /) -> None: ...
def num_threads() -> int: ...
def set_spin_us(us: float, /) -> None: ...
def isa() -> str: ...
def set_isa(name: str, /) -> None: ...
