"""torchslim's C++ operators (W4A8 linear, int8 1×1 convolution): schemas, fake (meta) implementations, build.

The schemas are defined here, in Python, so that the operator exists (and ``torch.compile`` /
``torch.export`` can trace it through its fake implementation) whether or not the C++ kernel builds.
:func:`load` compiles ``csrc/w4a8.cpp``, ``csrc/qconv.cpp``, ``csrc/qim2col.cpp``, ``csrc/qdwconv.cpp``,
``csrc/qpool.cpp`` and ``csrc/qplan.cpp`` once with
``torch.utils.cpp_extension.load`` (cached under ``$TORCHSLIM_CACHE/kernels`` when that is set, else in
torch's extensions folder) and the library
registers the CPU implementations. When the build fails (no compiler, no ninja) or
``TORCHSLIM_KERNELS=reference`` is set, the torch reference of :mod:`torchslim.kernels.reference` is
registered instead and the reason is logged once.

Operators:

- ``torchslim::w4a8_linear(x, packed, out_features, group_size, bias=None)``: the best path the CPU has:
  AVX-512 VNNI, else AVX2, else a portable C++ loop, all computing the same integer sums;
- ``torchslim::w4a8_linear_on(x, packed, out_features, group_size, bias, isa)``: one named path
  (``"avx512-vnni"``, ``"avx2"`` or ``"portable"``; an error when the CPU lacks it), for tests and comparisons;
- ``torchslim::qconv1x1(...)``: the static int8 1×1 convolution of :mod:`torchslim.kernels.qconv` (AMX,
  AVX-512 VNNI or a portable loop). It has no torch fallback: without the build its callers keep oneDNN's kernels;
- ``torchslim::qim2col(x, kernel, stride, padding, zp)``: uint8 codes unfolded so that a k × k or strided
  convolution runs as ``qconv1x1`` (:func:`torchslim.kernels.qconv.im2col`);
- ``torchslim::qdwconv(...)``: the static int8 depthwise convolution of :mod:`torchslim.kernels.qdwconv`
  (AVX-512 VNNI or a portable loop), with the same epilogue; no torch fallback either;
- ``torchslim::qscale_quantize(x, mult, scale, zp, x_scale, x_zp)``: ``x · mult`` (``mult`` per image and
  channel; ``x`` float32, or uint8 codes dequantized with ``x_scale`` / ``x_zp``) quantized
  to uint8 codes in one pass (:func:`torchslim.kernels.qconv.scale_quantize`); callers without the build
  multiply and quantize in torch;
- ``torchslim::qavgpool(x, scale, zp)``: the global average pool of channels-last uint8 codes, dequantized
  to float32 ``[N, C, 1, 1]`` (:func:`torchslim.kernels.qconv.avgpool`); callers without the build pool in torch;
- ``torchslim::qmaxpool(x, kernel, stride, padding)``: a max-pool of channels-last uint8 codes over the threads
  (:func:`torchslim.kernels.qconv.maxpool`); callers without the build use torch's quantized max-pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from torchslim.kernels.reference import w4a8_linear_reference

__all__ = [
    "ISAS",
    "QAVGPOOL",
    "QMAXPOOL",
    "QCONV1X1",
    "QDWCONV",
    "QIM2COL",
    "QSCALE_QUANTIZE",
    "W4A8_LINEAR",
    "W4A8_LINEAR_ON",
    "backend",
    "load",
    "qconv_amx",
    "qconv_plan",
    "vbmi",
    "qdwconv_plan",
]

log = logging.getLogger(__name__)

_SOURCES = [
    Path(__file__).resolve().parent / "csrc" / name
    for name in ("w4a8.cpp", "qconv.cpp", "qim2col.cpp", "qdwconv.cpp", "qpool.cpp", "qplan.cpp")
]
_EXTENSION = "torchslim_w4a8"
_ARGS = "Tensor x, Tensor packed, int out_features, int group_size, Tensor? bias"
ISAS = ("avx512-vnni", "avx2", "portable")  # the C++ paths, fastest first
_BACKENDS = {2: "avx512-vnni", 1: "avx2", 0: "portable-c++"}  # torchslim_w4a8_isa() -> backend name

_LIB = torch.library.Library("torchslim", "FRAGMENT")  # schemas only; the CPU kernels come from C++
_LIB.define(f"w4a8_linear({_ARGS}=None) -> Tensor")
_LIB.define(f"w4a8_linear_on({_ARGS}, str isa) -> Tensor")
# The overloads themselves: calling one skips the packet's overload resolution (about 1 µs a call, paid
# once per layer per decoded token). They dispatch to whichever CPU implementation load() registered.
W4A8_LINEAR = torch.ops.torchslim.w4a8_linear.default
W4A8_LINEAR_ON = torch.ops.torchslim.w4a8_linear_on.default
# Static int8 convolutions on channels-last uint8 codes (csrc/qconv.cpp; layouts in torchslim.kernels.qconv).
_LIB.define(
    "qconv1x1(Tensor x, float x_scale, int x_zp, Tensor packed, Tensor wsum, Tensor scale, Tensor bias, "
    "int out_channels, str act, float out_scale, int out_zp, bool out_u8, Tensor? accum, float accum_scale, "
    "int accum_zp, str isa) -> Tensor"
)
QCONV1X1 = torch.ops.torchslim.qconv1x1.default
_LIB.define(
    "qdwconv(Tensor x, float x_scale, int x_zp, Tensor weight, Tensor wsum, Tensor scale, Tensor bias, "
    "int[2] kernel, int[2] stride, int[2] padding, str act, float out_scale, int out_zp, bool out_u8, "
    "str isa) -> Tensor"
)
QDWCONV = torch.ops.torchslim.qdwconv.default
_LIB.define("qscale_quantize(Tensor x, Tensor mult, float scale, int zp, float x_scale=1.0, int x_zp=0) -> Tensor")

QSCALE_QUANTIZE = torch.ops.torchslim.qscale_quantize.default
_LIB.define("qim2col(Tensor x, int[2] kernel, int[2] stride, int[2] padding, int zp, float scale=1.0) -> Tensor")
QIM2COL = torch.ops.torchslim.qim2col.default
_LIB.define("qavgpool(Tensor x, float scale, int zp) -> Tensor")
QAVGPOOL = torch.ops.torchslim.qavgpool.default
_LIB.define("qmaxpool(Tensor x, int[2] kernel, int[2] stride, int[2] padding) -> Tensor")
QMAXPOOL = torch.ops.torchslim.qmaxpool.default


@torch.library.register_fake("torchslim::qconv1x1", lib=_LIB)
def _fake_1x1(x, x_scale, x_zp, packed, wsum, scale, bias, out_channels, act, out_scale, out_zp, out_u8, *rest):
    shape, dtype = (x.shape[0], out_channels, *x.shape[2:]), torch.uint8 if out_u8 else torch.float32
    return x.new_empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("torchslim::qdwconv", lib=_LIB)
def _fake_dwconv(x, x_scale, x_zp, weight, wsum, scale, bias, kernel, stride, padding, act, out_scale, out_zp,
                 out_u8, isa):  # fmt: skip
    h, w = ((x.shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in (0, 1))
    y = x.new_empty((x.shape[0], x.shape[1], h, w), dtype=torch.uint8 if out_u8 else torch.float32)
    return y.contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("torchslim::qim2col", lib=_LIB)
def _fake_im2col(x, kernel, stride, padding, zp, scale=1.0):
    h, w = ((x.shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in (0, 1))
    cols = x.new_empty((x.shape[0], kernel[0] * kernel[1] * x.shape[1], h, w), dtype=torch.uint8)
    return cols.contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("torchslim::qavgpool", lib=_LIB)
def _fake_avgpool(x, scale, zp):
    return x.new_empty((x.shape[0], x.shape[1], 1, 1), dtype=torch.float32)


@torch.library.register_fake("torchslim::qmaxpool", lib=_LIB)
def _fake_maxpool(x, kernel, stride, padding):
    h, w = ((x.shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in (0, 1))
    return x.new_empty((x.shape[0], x.shape[1], h, w)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("torchslim::qscale_quantize", lib=_LIB)
def _fake_scale_quantize(x, mult, scale, zp, x_scale=1.0, x_zp=0):
    return torch.empty_like(x, dtype=torch.uint8)


@torch.library.register_fake("torchslim::w4a8_linear", lib=_LIB)
def _fake(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, group_size: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("torchslim::w4a8_linear_on", lib=_LIB)
def _fake_on(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, group_size: int, bias: torch.Tensor | None, isa: str
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _reference_on(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, group_size: int, bias: torch.Tensor | None, isa: str
) -> torch.Tensor:
    return w4a8_linear_reference(x, packed, out_features, group_size, bias)


_lock = threading.Lock()
_backend: str | None = None  # "avx512-vnni", "avx2", "portable-c++" or "torch-reference" once loaded
_amx = False  # whether qconv1x1 has AMX tiles here, once loaded
_vbmi = False  # whether the AVX-512 VNNI + VBMI loops (depthwise, stem im2col) run here, once loaded
_module = None  # the built extension (a Python module), once loaded


def _build_directory() -> str | None:
    root = os.environ.get("TORCHSLIM_CACHE")
    if not root:
        return None  # torch's extensions folder (TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions)
    path = Path(root).expanduser() / "kernels" / _EXTENSION
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def qconv_amx() -> bool:
    """Whether the compiled ``qconv1x1`` runs AMX tiles here (builds at the first call; False without a build)."""
    load()
    return _amx


def vbmi() -> bool:
    """Whether the compiled ``qdwconv`` and the few-channel ``qim2col`` run their AVX-512 VNNI + VBMI loops here
    (builds at the first call; False without a build)."""
    load()
    return _vbmi


def qconv_plan(*args):
    """A ``QConvPlan`` of ``csrc/qplan.cpp`` (a static int8 convolution's constants bound once, called with
    its input: ``plan(x)``, ``plan.accumulate(x, codes, scale, zp, relu)``); None without the build."""
    load()
    return None if _module is None else _module.QConvPlan(*args)


def qdwconv_plan(*args):
    """A ``QDwConvPlan`` of ``csrc/qplan.cpp`` (a static int8 depthwise convolution's constants bound once,
    called with its input: ``plan(x)``); None without the build."""
    load()
    return None if _module is None else _module.QDwConvPlan(*args)


def _ensure_ninja_on_path() -> None:
    # cpp_extension runs `ninja` from PATH; the `ninja` wheel installs it beside the interpreter, which is
    # not on PATH when the venv's python is called without activating the venv.
    if shutil.which("ninja"):
        return
    try:
        import ninja  # optional: only its binary folder is needed

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        return
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def _build() -> str:
    from torch.utils import cpp_extension  # imported only when a build is needed

    _ensure_ninja_on_path()
    # torch rebuilds when the sources or the flags change; the digest of every file under csrc/ (headers
    # included, which torch does not hash) in the flags makes a header change rebuild too.
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(_SOURCES[0].parent.iterdir()))).hexdigest()[:16]
    # A Python module (qplan.cpp's pybind11 classes) whose import also registers the operators' CPU kernels.
    module = cpp_extension.load(
        name=_EXTENSION,
        sources=[str(p) for p in _SOURCES],
        extra_cflags=["-O3", "-fopenmp", f"-DTS_SOURCES_DIGEST={digest}"],
        extra_ldflags=["-fopenmp"],
        build_directory=_build_directory(),
        is_python_module=True,
        verbose=False,
    )
    global _amx, _module, _vbmi
    _module = module
    library = ctypes.CDLL(module.__file__)
    isa = library.torchslim_w4a8_isa
    isa.restype = ctypes.c_int
    amx = library.torchslim_qconv_amx
    amx.restype = ctypes.c_int
    _amx = bool(amx())
    vbmi = library.torchslim_vbmi
    vbmi.restype = ctypes.c_int
    _vbmi = bool(vbmi())
    return _BACKENDS[isa()]


def _register_reference(reason: str) -> None:
    log.warning("torchslim kernels: %s; w4a8_linear runs the torch reference (slow)", reason)
    _LIB.impl("w4a8_linear", w4a8_linear_reference, "CPU")
    _LIB.impl("w4a8_linear_on", _reference_on, "CPU")
    # No torch fallback for the int8 convolutions: their callers keep oneDNN's when the kernels are not built.


# Under torch.compile the call runs as plain Python while the model is traced and its result is a constant:
# otherwise the lock below breaks the graph at every W4A8 layer traced before the first load, and each
# break splits the model into frames that recompile until torch's recompile limit sends them back to eager.
@torch.compiler.assume_constant_result
def load() -> str:
    """Build (first call only) and register the CPU kernels; return the backend now in use.

    ``"avx512-vnni"`` (the fast path), ``"avx2"`` (compiled, CPU without AVX-512 VNNI), ``"portable-c++"``
    (compiled, neither instruction set) or ``"torch-reference"`` (the build failed or ``TORCHSLIM_KERNELS=reference``; the reason is logged once).
    """
    global _backend
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            if os.environ.get("TORCHSLIM_KERNELS", "").lower() == "reference":
                _register_reference("TORCHSLIM_KERNELS=reference")
                _backend = "torch-reference"
            else:
                try:
                    _backend = _build()
                except (RuntimeError, OSError, ImportError, ValueError, subprocess.SubprocessError, SystemExit) as e:
                    # cpp_extension raises RuntimeError for compiler errors and a missing ninja, OSError
                    # when the library cannot be opened, SystemExit from setuptools in some setups.
                    _register_reference(
                        f"the C++ kernel could not be built ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                    )
                    _backend = "torch-reference"
    return _backend


def backend() -> str | None:
    """The backend :func:`load` chose, or None before the first load."""
    return _backend
