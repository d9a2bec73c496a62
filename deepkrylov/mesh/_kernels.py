"""Compiled CPU kernels for the stencil operators: built once per machine with the system C compiler, loaded with
ctypes; ``None`` (and the eager torch path) where no compiler is found or ``DEEPKRYLOV_KERNELS=0``.

The shared library is cached under ``$DEEPKRYLOV_CACHE`` (default ``~/.cache/deepkrylov``), keyed by the source,
the compiler and the CPU's flags (it is built with ``-march=native``), and written atomically so that ranks of an
``mpiexec`` job starting together do not see a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

_SOURCE = Path(__file__).with_name("_stencil7.c")
# -ffp-contract=off: no fused multiply-adds (GCC's default under -std=c99, not clang's), so that the compact and the
# general forms of a constant-coefficient operator give the same bits
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c99", "-fno-math-errno", "-ffp-contract=off"]


def _cpu_key() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("DEEPKRYLOV_CACHE", Path.home() / ".cache" / "deepkrylov"))


def _build(source: Path) -> Optional[ctypes.CDLL]:
    """Compile ``source`` (once per source, compiler and CPU) and load it; None where that is not possible."""
    if os.environ.get("DEEPKRYLOV_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = source.read_bytes()
    key = hashlib.sha256(src + cc.encode() + " ".join(_FLAGS).encode() + _cpu_key().encode()).hexdigest()[:16]
    lib = _cache_dir() / f"{source.stem.lstrip('_')}-{key}.so"
    if not lib.exists():
        try:
            lib.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
            os.close(fd)
            subprocess.run([cc, *_FLAGS, str(source), "-o", tmp], check=True, capture_output=True, timeout=120)
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError):
            if "tmp" in locals() and os.path.exists(tmp):
                os.unlink(tmp)
            return None
    try:
        return ctypes.CDLL(str(lib))
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def stencil_library() -> Optional[ctypes.CDLL]:
    """The compiled 7-point stencil library, or None (no compiler, build failure, or disabled)."""
    so = _build(_SOURCE)
    if so is None:
        return None
    p, i64, dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for name in ("stencil7_f64", "stencil7_f32"):
        fn = getattr(so, name)
        fn.restype = None
        fn.argtypes = [p, p, i64, i64, i64, i64] + [p] * 6 + [dbl] * 4 + [p] * 7 + [p] + [ctypes.c_int] * 3
    for name in ("stencil7c_f64", "stencil7c_f32"):
        fn = getattr(so, name)
        fn.restype = None
        fn.argtypes = [p, p, i64, i64, i64, i64] + [p] * 6 + [dbl] * 3 + [p, p] + [ctypes.c_int] * 3
    return so


@functools.lru_cache(maxsize=1)
def _llc_bytes() -> int:
    """The last-level cache size (Linux sysfs), 32 MiB where it cannot be read."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
            best = max(best, int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[text[-1]])
        except (OSError, ValueError, KeyError):
            continue
    return best or (32 << 20)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def stencil7(x: torch.Tensor, out: torch.Tensor, faces: list, uniform: Optional[tuple], coefficients: Optional[list],
             zero: torch.Tensor, dims: Optional[tuple] = None, wrap: int = 0) -> None:
    """``out = A x`` on a contiguous (B, n0, n1, n2) CPU block (see ``_stencil7.c``): ``faces`` six tensors or
    None; ``uniform`` (c, t0, t1, t2) or None with ``coefficients`` [d, w0l, w0h, w1l, w1h, w2l, w2h] of shape
    (n0, n1, n2); ``zero`` a zero tensor of at least n2 entries. All of x's dtype, contiguous. ``dims``: (B, n0,
    n1, n2) when ``x`` and ``out`` are contiguous tensors of another shape with those elements (no views made);
    ``wrap``: bit a set where axis a is periodic and whole in the block (its faces are then the block's own
    opposite planes, read in place; pass None for them). An ``out`` larger than the last-level cache is written
    with non-temporal stores."""
    so = stencil_library()
    assert so is not None
    fn = so.stencil7_f64 if x.dtype == torch.float64 else so.stencil7_f32
    B, n0, n1, n2 = x.shape if dims is None else dims
    c, t0, t1, t2 = uniform if uniform is not None else (0.0, 0.0, 0.0, 0.0)
    coef = coefficients if coefficients is not None else [None] * 7
    fn(x.data_ptr(), out.data_ptr(), B, n0, n1, n2, *(_ptr(f) for f in faces), c, t0, t1, t2,
       *(_ptr(w) for w in coef), zero.data_ptr(), wrap, torch.get_num_threads(),
       int(out.numel() * out.element_size() > _llc_bytes()))  # stream stores only where y cannot stay cached


def stencil7_compact(x: torch.Tensor, out: torch.Tensor, faces: list, t: tuple, code: torch.Tensor,
                     zero: torch.Tensor, dims: Optional[tuple] = None, wrap: int = 0) -> None:
    """``out = A x`` for a constant-coefficient operator in compact form (see ``_stencil7.c``): ``t`` the face
    weights (t0, t1, t2), ``code`` the (n0, n1, n2) int16 cell codes (read as uint16); the rest as :func:`stencil7`."""
    so = stencil_library()
    assert so is not None
    fn = so.stencil7c_f64 if x.dtype == torch.float64 else so.stencil7c_f32
    B, n0, n1, n2 = x.shape if dims is None else dims
    assert code.dtype == torch.int16 and code.is_contiguous() and tuple(code.shape) == (n0, n1, n2)
    fn(x.data_ptr(), out.data_ptr(), B, n0, n1, n2, *(_ptr(f) for f in faces), *(float(v) for v in t),
       code.data_ptr(), zero.data_ptr(), wrap, torch.get_num_threads(),
       int(out.numel() * out.element_size() > _llc_bytes()))


@functools.lru_cache(maxsize=1)
def transfer_library() -> Optional[ctypes.CDLL]:
    """The compiled 3D multigrid transfers (``_transfer3d.c``), or None."""
    so = _build(Path(__file__).with_name("_transfer3d.c"))
    if so is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("prolong_add_f64", "prolong_add_f32", "restrict_f64", "restrict_f32"):
        fn = getattr(so, name)
        fn.restype = None
        fn.argtypes = [p, p, p, i64, i64, i64, i64, ctypes.c_int]
    return so


def transfer_ok(*tensors: torch.Tensor) -> bool:
    """Whether the compiled transfers can take these tensors (CPU, float32/64, one dtype, contiguous)."""
    t0 = tensors[0]
    return (t0.device.type == "cpu" and t0.dtype in (torch.float32, torch.float64)
            and all(t.dtype == t0.dtype and t.device == t0.device and t.is_contiguous() for t in tensors)
            and not any(t.requires_grad for t in tensors) and transfer_library() is not None)


def prolong_add(padded: torch.Tensor, u: torch.Tensor, scale: torch.Tensor) -> None:
    """``u += scale * interpolate(padded)`` (see ``_transfer3d.c``); padded (B, m0+2, m1+2, m2+2)."""
    so = transfer_library()
    assert so is not None
    B, a, b, c = padded.shape
    fn = so.prolong_add_f64 if u.dtype == torch.float64 else so.prolong_add_f32
    fn(padded.data_ptr(), u.data_ptr(), scale.data_ptr(), B, a - 2, b - 2, c - 2, torch.get_num_threads())


def restrict(padded: torch.Tensor, out: torch.Tensor, value: torch.Tensor) -> None:
    """``out = value * (interpolation transpose)(padded)``; padded (B, 2m0+2, 2m1+2, 2m2+2), out (B, m0, m1, m2)."""
    so = transfer_library()
    assert so is not None
    B, m0, m1, m2 = out.shape
    fn = so.restrict_f64 if out.dtype == torch.float64 else so.restrict_f32
    fn(padded.data_ptr(), out.data_ptr(), value.data_ptr(), B, m0, m1, m2, torch.get_num_threads())
