"""The int8 1×1 convolution kernel (torchslim.kernels.qconv) against its exact torch reference, its layout,
its errors; and the static int8 modules' small-layer path against their oneDNN path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from op_calls import OpCalls
from tiny_nets import small_cnn

from torchslim.kernels import qconv
from torchslim.quantization.int8 import static_small

# (batch, in K, out N, H, W): K not a multiple of 4, N not a multiple of 16, one pixel (squeeze-and-excite),
# pixel counts that leave rows after the 6- and 3-row tiles, and work large enough to split over threads;
# for the AMX path, K of exactly 64 and just over it, 16 / 32 pixels and counts that leave a partial
# 32-pixel unit (copied to a padded buffer), an odd number of 16-channel blocks.
SHAPES = [
    (1, 16, 64, 1, 1),
    (1, 6, 10, 1, 1),
    (2, 40, 72, 7, 5),
    (1, 960, 240, 1, 1),
    (3, 13, 33, 3, 3),
    (1, 96, 24, 56, 56),
    (1, 64, 48, 4, 8),
    (2, 65, 40, 3, 3),
    (1, 200, 16, 4, 4),
    (1, 24, 80, 9, 7),
]


def _QConvCalls() -> OpCalls:
    """The input shapes of the ``torchslim::qconv1x1`` calls made while it is active."""
    return OpCalls(torch.ops.torchslim.qconv1x1.default, lambda args: args[0].shape)


def _case(b, k, n, h, w, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, k, h, w), generator=gen, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    weight = torch.randint(-127, 128, (n, k, 1, 1), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) * 1e-3 + 1e-5
    bias = torch.randn(n, generator=gen)
    accum = torch.randint(0, 256, (b, n, h, w), generator=gen, dtype=torch.uint8)
    return x, weight, scale, bias, accum


def _paths(compiled: str) -> list[str]:
    fast = ["avx512-vnni"] + (["amx"] if qconv.amx() else []) if compiled == "avx512-vnni" else []
    return ["auto", "portable", *fast]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", qconv.ACTIVATIONS)
def test_matches_reference(compiled, shape, act):
    x, weight, scale, bias, codes = _case(*shape, seed=sum(shape))
    packed, wsum = qconv.pack_conv1x1(weight)
    for isa in _paths(compiled):
        for accum in (None, (codes, 0.02, 120)):
            kw = dict(act=act, out_scale=0.05, out_zp=100, accum=accum)
            y = qconv.conv1x1(x, packed, wsum, scale, bias, 117, out_u8=False, isa=isa, **kw)
            ref = qconv.conv1x1_reference(x, weight, scale, bias, 117, out_u8=False, **kw)
            assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
            q = qconv.conv1x1(x, packed, wsum, scale, bias, 117, out_u8=True, isa=isa, **kw)
            qref = qconv.conv1x1_reference(x, weight, scale, bias, 117, out_u8=True, **kw)
            diff = (q.int() - qref.int()).abs()
            assert q.dtype == torch.uint8 and q.shape == qref.shape
            assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01  # a code may round apart at a tie


def test_swish_over_its_whole_range(compiled):
    """The vector swish (a polynomial 2^f scaled by 2^i) against v / (1 + e^-v) in float64, from pre-activations
    far below the clamp of its exponent (where 2^t is infinite and the value -0) through 0 to far above."""
    n, pixels = 48, 64
    x = torch.arange(256, dtype=torch.uint8)[torch.arange(pixels) * 4 % 256].reshape(1, 1, 8, 8)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.ones(n, 1, 1, 1, dtype=torch.int8)
    scale = torch.logspace(-4, 0.5, n)  # v = (x - 117) * scale: |v| from 0 to 435
    bias = torch.linspace(-1.0, 1.0, n)
    packed, wsum = qconv.pack_conv1x1(weight)
    v = (x.double().reshape(pixels, 1) - 117.0) * scale.double() + bias.double()
    exact = (v / (1.0 + torch.exp(-v))).reshape(1, 8, 8, n).permute(0, 3, 1, 2)
    for isa in _paths(compiled):
        y = qconv.conv1x1(x, packed, wsum, scale, bias, 117, "swish", isa=isa)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[4:])
def test_amx_equals_vnni(compiled, shape):
    """The tile path sums the same integers and runs the same epilogue: its outputs are the VNNI loop's, bit
    for bit."""
    if not qconv.amx():
        pytest.skip("this CPU or kernel grants no AMX-INT8 tiles")
    x, weight, scale, bias, codes = _case(*shape, seed=3)
    packed, wsum = qconv.pack_conv1x1(weight)
    for out_u8 in (False, True):
        kw = dict(act="swish", out_scale=0.05, out_zp=100, out_u8=out_u8, accum=(codes, 0.02, 120))
        tiles = qconv.conv1x1(x, packed, wsum, scale, bias, 117, isa="amx", **kw)
        assert torch.equal(tiles, qconv.conv1x1(x, packed, wsum, scale, bias, 117, isa="avx512-vnni", **kw))


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_float_input_quantized_inside(compiled, shape):
    x, weight, scale, bias, _ = _case(*shape, seed=7)
    values = (x.float() - 117.0) * 0.03 + torch.randn(x.shape) * 0.01  # off the code grid, some out of range
    values = values.contiguous(memory_format=torch.channels_last)
    packed, wsum = qconv.pack_conv1x1(weight)
    for isa in _paths(compiled):
        y = qconv.conv1x1(values, packed, wsum, scale, bias, 117, "relu", x_scale=0.03, isa=isa)
        ref = qconv.conv1x1_reference(values, weight, scale, bias, 117, "relu", x_scale=0.03)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_layout_round_trip_and_padding():
    w = torch.randint(-127, 128, (33, 13, 1, 1), dtype=torch.int8)
    packed, wsum = qconv.pack_conv1x1(w)
    assert packed.shape == (3, 16, 16, 4)  # inputs padded to 64: one AMX tile of 16 quads per block
    assert torch.equal(qconv.unpack_conv1x1(packed, 33, 13), w)
    assert torch.equal(wsum, w.sum((1, 2, 3), dtype=torch.int32))
    full = qconv.unpack_conv1x1(packed, 48, 64)  # padded channels and inputs are zero
    assert full[33:].abs().sum() == 0 and full[:, 13:].abs().sum() == 0


def test_errors(compiled):
    x, weight, scale, bias, _ = _case(1, 8, 16, 2, 2, seed=0)
    packed, wsum = qconv.pack_conv1x1(weight)
    with pytest.raises(ValueError, match="act must be one of"):
        qconv.conv1x1(x, packed, wsum, scale, bias, 0, act="gelu")
    with pytest.raises(ValueError, match="isa must be"):
        qconv.conv1x1(x, packed, wsum, scale, bias, 0, isa="avx2")
    with pytest.raises(RuntimeError, match="channels-last"):
        qconv.conv1x1(x.contiguous(), packed, wsum, scale, bias, 0)
    with pytest.raises(RuntimeError, match="packed must be int8"):
        qconv.conv1x1(x, packed[..., :2], wsum, scale, bias, 0)
    if compiled != "avx512-vnni":
        with pytest.raises(RuntimeError, match="lacks avx512-vnni"):
            qconv.conv1x1(x, packed, wsum, scale, bias, 0, isa="avx512-vnni")
    if not qconv.amx():
        with pytest.raises(RuntimeError, match="grants no AMX-INT8"):
            qconv.conv1x1(x, packed, wsum, scale, bias, 0, isa="amx")


class _SqueezeNet(nn.Module):
    """Squeeze-and-excite on a 1 × 1 map, a residual 1×1 projection, a large 1×1 layer (over SMALL_MACS)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.act, self.grow = nn.Conv2d(24, 8, 1), nn.ReLU(), nn.Conv2d(8, 24, 1)
        self.proj = nn.Conv2d(24, 24, 1)
        self.big = nn.Sequential(nn.Conv2d(24, 1200, 1), nn.SiLU())
        self.head = nn.Linear(1200, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x)
        y = y * torch.sigmoid(self.grow(self.act(self.reduce(self.pool(y)))))
        y = self.proj(y) + y
        return self.head(self.big(y).mean((2, 3)))


def test_module_path_matches_onednn(compiled, monkeypatch):
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static

    torch.manual_seed(0)
    model = _SqueezeNet().eval()
    calib = [(torch.randn(4, 3, 16, 16),) for _ in range(2)]
    compress_(model, Int8Static(), ctx=Context(calibration=calib))
    x = torch.randn(1, 3, 16, 16)
    monkeypatch.setattr(qconv, "amx", lambda: False)  # the VNNI rule: layers up to SMALL_MACS
    monkeypatch.setattr(static_small, "SMALL_MACS", 5_000_000)  # big (7.4 M multiply-adds) over it, the others under
    with torch.inference_mode(), _QConvCalls() as calls:
        fast = model(x)
        monkeypatch.setattr(static_small, "SMALL_MACS", 0)
        slow = model(x)
    if compiled != "avx512-vnni":  # elsewhere oneDNN (or the exact reference path) keeps every layer
        assert calls == []
        return
    # reduce and grow (1 × 1 maps) and proj (the residual add fused) take the C++ loop; big stays on oneDNN; the
    # Linear head (6000 multiply-adds) takes it as 1 × 1 rows
    assert calls == [
        torch.Size([1, 24, 1, 1]),
        torch.Size([1, 8, 1, 1]),
        torch.Size([1, 24, 16, 16]),
        torch.Size([1, 1200, 1, 1]),
    ]
    torch.testing.assert_close(fast, slow, rtol=0, atol=0.02 * slow.abs().max().item())


def test_module_path_with_amx_takes_every_1x1(compiled, monkeypatch):
    """Where the CPU has AMX tiles every 1×1 stride-1 layer takes the C++ loop, however large."""
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static

    torch.manual_seed(0)
    model = _SqueezeNet().eval()
    compress_(model, Int8Static(), ctx=Context(calibration=[(torch.randn(4, 3, 16, 16),)]))
    monkeypatch.setattr(qconv, "amx", lambda: compiled == "avx512-vnni")  # as on an AMX CPU (any x86 with VNNI runs it)
    monkeypatch.setattr(static_small, "SMALL_MACS", 0)
    with torch.inference_mode(), _QConvCalls() as calls:
        model(torch.randn(1, 3, 16, 16))
    # the 3-channel 3 × 3 stem's im2col rows (27 bytes: under IM2COL_FEW_CHANNELS_MACS), then every 1×1, then the
    # Linear head's rows
    assert [shape[1] for shape in calls] == ([27, 24, 8, 24, 24, 1200] if compiled == "avx512-vnni" else [])


@pytest.mark.parametrize("shape", [(2, 40, 7, 5), (1, 17, 3, 3), (3, 144, 6, 6)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_scale_quantize_equals_torch(compiled, shape, channels_last, monkeypatch):
    """The fused gate product and quantization gives torch's codes for x * mult, in x's memory format; the
    torch fallback (no build) gives the same codes."""
    import warnings

    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 4  # some codes clamp at 0 and 255
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    mult = torch.rand(shape[0], shape[1], 1, 1, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch flags quantize_per_tensor as deprecated
        ref = torch.quantize_per_tensor(x * mult, 0.03, 117, torch.quint8).int_repr()
    q = qconv.scale_quantize(x, mult, 0.03, 117)
    assert q.dtype == torch.uint8 and torch.equal(q, ref)
    assert q.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert {0, 255} <= set(q.unique().tolist())
    monkeypatch.setattr(qconv, "available", lambda: False)
    assert torch.equal(qconv.scale_quantize(x, mult, 0.03, 117), ref)
    monkeypatch.undo()
    codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)  # a map of codes, read as (q - 120) * 0.05
    codes = codes.contiguous(memory_format=torch.channels_last) if channels_last else codes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = torch.quantize_per_tensor(((codes.float() - 120) * 0.05) * mult, 0.03, 117, torch.quint8).int_repr()
    assert torch.equal(qconv.scale_quantize(codes, mult, 0.03, 117, (0.05, 120)), ref)
    monkeypatch.setattr(qconv, "available", lambda: False)
    assert torch.equal(qconv.scale_quantize(codes, mult, 0.03, 117, (0.05, 120)), ref)


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [
        ((2, 16, 9, 9), (3, 3), (2, 2), (1, 1)),
        ((1, 32, 8, 8), (3, 3), (1, 1), (1, 1)),
        ((3, 13, 7, 5), (3, 1), (2, 1), (1, 0)),
        ((1, 24, 6, 6), (1, 1), (2, 2), (0, 0)),
        ((64, 8, 4, 4), (5, 5), (1, 1), (2, 2)),
        ((4, 1, 8, 8), (3, 3), (1, 1), (1, 1)),  # kernel rows under 32 bytes: the byte loop
        ((2, 3, 9, 7), (3, 3), (2, 2), (1, 1)),
        ((1, 1, 1, 2), (3, 3), (1, 2), (1, 1)),  # taps past both edges of a one-column output
        ((3, 2, 5, 6), (2, 3), (3, 2), (0, 2)),
        ((1, 3, 23, 37), (7, 7), (2, 2), (3, 3)),  # a ResNet stem: 21-byte kernel rows, rows not 16 pixels long
        ((2, 4, 5, 17), (3, 5), (1, 2), (1, 2)),
        ((2, 3, 5, 19), (1, 1), (1, 1), (0, 0)),  # a 1 × 1 unfold: the image's codes alone
    ],
)
def test_im2col_rows_run_a_kxk_convolution(compiled, shape, kernel, stride, padding):
    """A k × k or strided convolution is conv1x1 on the im2col rows with pack_conv's weight; padded taps read
    the zero point (zero in real values)."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    weight = torch.randint(-127, 128, (20, shape[1], *kernel), generator=gen, dtype=torch.int8)
    scale, bias = torch.rand(20, generator=gen) * 1e-3, torch.randn(20, generator=gen)
    packed, wsum = qconv.pack_conv(weight)
    cols = qconv.im2col(x, kernel, stride, padding, 117)
    acc = torch.nn.functional.conv2d(x.double() - 117, weight.double(), stride=stride, padding=padding).float()
    ref = torch.relu(acc * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
    for isa in _paths(compiled):
        y = qconv.conv1x1(cols, packed, wsum, scale, bias, 117, "relu", isa=isa)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    values = ((x.float() - 117) * 0.03).contiguous(memory_format=torch.channels_last)  # float32: quantized first
    assert torch.equal(qconv.im2col(values, kernel, stride, padding, 117, 0.03), cols)
    # A contiguous (NCHW) float32 image: up to 4 channels quantized and unfolded in one pass (with VBMI).
    assert torch.equal(qconv.im2col(values.contiguous(), kernel, stride, padding, 117, 0.03), cols)


def test_image_codes_in_one_pass(compiled):
    """A stem's float32 image: its codes, channels-last, as quantize_codes then a layout copy give them (a code
    may round apart at an exact tie); other inputs are left to the caller (None)."""
    from torchslim.quantization.int8.static_add import quantize_codes

    x = torch.randn(2, 3, 9, 21, generator=torch.Generator().manual_seed(0)) * 2
    ref = quantize_codes(x, 0.02, 120).contiguous(memory_format=torch.channels_last)
    codes = static_small.image_codes(x, 0.02, 120)
    assert static_small.image_codes(torch.randn(1, 5, 4, 4), 0.02, 120) is None  # more than STEM_CHANNELS
    assert static_small.image_codes(x.contiguous(memory_format=torch.channels_last), 0.02, 120) is None
    if not qconv.vbmi():
        assert codes is None
        return
    diff = (codes.int() - ref.int()).abs()
    assert codes.is_contiguous(memory_format=torch.channels_last) and codes.shape == ref.shape
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("activation", ["none", "relu", "hardswish", "swish"])
@pytest.mark.parametrize("shape", [(1, 70), (5, 70), (2, 3, 130), (33, 64)])
def test_static_linear_on_the_1x1_loop_matches_int_mm(compiled, activation, shape, monkeypatch):
    """An Int8StaticLinear's float32 rows run through the 1×1 plan where the CPU has AMX (else VNNI up to SMALL_MACS):
    the same values as the torch._int_mm path (both quantize the rows with the input qparams; float32 sums of
    exact int32 products), for row counts off the tiles, a 3-d input and every fused activation; a bfloat16
    layer keeps the torch path; a load_state_dict rebuilds the plan."""
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static, Int8StaticLinear

    torch.manual_seed(0)
    k = shape[-1]
    model = torch.nn.Sequential(torch.nn.Linear(k, 48))
    compress_(model, Int8Static(), ctx=Context(calibration=[(torch.randn(16, k),)]))
    q = model[0]
    q.activation, q.relu = activation, activation == "relu"
    x = torch.randn(*shape)
    calls = []
    monkeypatch.setattr(
        static_small, "small_linear", lambda m, x, f=static_small.small_linear: calls.append(1) or f(m, x)
    )
    with torch.inference_mode():
        fast = q(x)
        assert bool(calls) == (compiled == "avx512-vnni" and (qconv.amx() or qconv.vnni()))
        monkeypatch.setattr(static_small, "linear_eligible", lambda m, x: False)
        slow = q(x)
    assert fast.shape == (*shape[:-1], 48)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * slow.abs().max().item())
    monkeypatch.undo()
    other = Int8StaticLinear.from_float(torch.nn.Linear(k, 48), torch.tensor(0.05), torch.tensor(0))
    other.activation, other.relu = activation, activation == "relu"
    q.load_state_dict(other.state_dict())  # new weights and qparams in place: the cached plan must not be reused
    with torch.inference_mode():
        assert torch.equal(q(x), other(x))
    q.output_dtype = torch.bfloat16
    assert not static_small.linear_eligible(q, x)


def test_kxk_routing_by_macs_or_im2col_rows_per_thread(monkeypatch):
    """With AMX a k × k layer over IM2COL_MACS still takes the tile loop while its im2col rows (pixels · kh · kw
    · in_channels bytes) fit IM2COL_ROW_BYTES_PER_THREAD per thread: ResNet-18's 64-channel 3 × 3 at 56 × 56
    (1.8 MB of rows) on 2 threads, not on 1; batch 32 (58 MB) on neither."""
    monkeypatch.setattr(qconv, "amx", lambda: True)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x, x32 = torch.zeros(1, 64, 56, 56), torch.zeros(32, 64, 56, 56)
    assert 56 * 56 * 9 * 64 * 64 > static_small.IM2COL_MACS
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not static_small.eligible(conv, x)
        torch.set_num_threads(2)
        assert static_small.eligible(conv, x) and not static_small.eligible(conv, x32)
        monkeypatch.setattr(static_small, "IM2COL_ROW_BYTES_PER_THREAD", 0)
        assert not static_small.eligible(conv, x)
        monkeypatch.setattr(static_small, "IM2COL_MACS", 56 * 56 * 9 * 64 * 64)
        assert static_small.eligible(conv, x)
    finally:
        torch.set_num_threads(threads)


def test_module_path_with_amx_takes_small_kxk_convolutions(compiled, monkeypatch):
    """With AMX a k × k convolution of 16 input channels and more, up to IM2COL_MACS, runs through im2col
    and the C++ loop; the 3-channel stem on its float32 image up to STEM_MACS where the CPU has VBMI (the
    one-pass unfold), else up to IM2COL_FEW_CHANNELS_MACS; the outputs match oneDNN's."""
    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static

    model = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    compress_(model, Int8Static(), ctx=Context(calibration=[(x,)]))
    monkeypatch.setattr(qconv, "amx", lambda: compiled == "avx512-vnni")
    stem_macs = 2 * 12 * 12 * 16 * 3 * 9  # under the few-channel limit
    assert stem_macs <= static_small.IM2COL_FEW_CHANNELS_MACS
    with torch.inference_mode(), _QConvCalls() as calls:
        fast = model(x)
    with torch.inference_mode(), _QConvCalls() as calls_stem_path:
        monkeypatch.setattr(static_small, "IM2COL_FEW_CHANNELS_MACS", stem_macs - 1)
        fast_stem_path = model(x)
    with torch.inference_mode(), _QConvCalls() as calls_channels_last:
        model(x.contiguous(memory_format=torch.channels_last))  # not an NCHW image: the few-channel limit holds
    with torch.inference_mode(), _QConvCalls() as calls_big_stem:
        monkeypatch.setattr(static_small, "STEM_MACS", stem_macs - 1)
        fast_big_stem = model(x)
        monkeypatch.setattr(static_small, "IM2COL_MACS", 0)
        monkeypatch.setattr(qconv, "amx", lambda: False)
        monkeypatch.setattr(static_small, "SMALL_MACS", 0)
        slow = model(x)  # every layer on oneDNN
    assert [shape[1] for shape in calls] == ([9 * 3, 9 * 16, 32] if compiled == "avx512-vnni" else [])
    stem_path = compiled == "avx512-vnni" and qconv.vbmi()
    big_stem = [shape[1] for shape in calls_big_stem]
    assert big_stem == ([9 * 16, 32] if compiled == "avx512-vnni" else [])
    assert [shape[1] for shape in calls_stem_path] == ([9 * 3, 9 * 16, 32] if stem_path else big_stem)
    assert [shape[1] for shape in calls_channels_last] == big_stem
    for y in (fast, fast_stem_path, fast_big_stem):
        torch.testing.assert_close(y, slow, rtol=0, atol=0.02 * slow.abs().max().item())


@pytest.mark.parametrize("shape", [(1, 1, 3, 5), (2, 70, 7, 5), (3, 130, 1, 1), (1, 64, 28, 28), (32, 96, 9, 9)])
def test_avgpool_equals_mean_of_codes(compiled, shape, monkeypatch):
    """The global average pool of channels-last codes, dequantized: the exact mean of the codes (int32 sums)
    minus the zero point, times the scale; channel counts off the 64-channel chunks, one pixel, maps large
    enough to split over threads; the torch fallback (no build, or a contiguous map) gives the same values."""
    gen = torch.Generator().manual_seed(sum(shape))
    codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    codes[:, :, 0, 0] = 255  # a saturated pixel in every channel
    x = codes.contiguous(memory_format=torch.channels_last)
    exact = (codes.double().mean((2, 3), keepdim=True) - 117) * 0.03
    y = qconv.avgpool(x, 0.03, 117)
    assert y.dtype == torch.float32 and y.shape == (shape[0], shape[1], 1, 1)
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qconv.avgpool(codes, 0.03, 117).double(), exact, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(qconv, "available", lambda: False)
    torch.testing.assert_close(qconv.avgpool(x, 0.03, 117).double(), exact, rtol=1e-6, atol=1e-6)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="zp must be in 0..255"):
        torch.ops.torchslim.qavgpool(x, 0.03, 300)


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "padding"),
    [
        ((32, 64, 23, 20), (3, 3), (2, 2), (1, 1)),  # a ResNet stem's pool, split over threads
        ((1, 130, 9, 11), (3, 3), (2, 2), (1, 1)),  # channels off the 64-byte vectors
        ((2, 5, 7, 8), (2, 2), (2, 2), (0, 0)),
        ((3, 17, 6, 9), (5, 3), (1, 2), (2, 1)),  # rectangular window, padding half of it
        ((1, 64, 1, 1), (1, 1), (1, 1), (0, 0)),
        ((2, 70, 8, 8), (3, 3), (3, 3), (0, 0)),  # a stride that leaves the last rows and columns out
    ],
)
def test_maxpool_equals_torch_max_pool(compiled, shape, kernel, stride, padding, monkeypatch):
    """The max-pool of channels-last codes: equal to torch's max-pool of the same values (padding taps skipped,
    floor mode) on every window shape here; the fallback (no build, or a contiguous map) too; bad windows raise."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.max_pool2d(x.float(), kernel, stride, padding).to(torch.uint8)
    y = qconv.maxpool(x, kernel, stride, padding)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, want)
    assert torch.equal(qconv.maxpool(x.contiguous(), kernel, stride, padding), want)
    monkeypatch.setattr(qconv, "available", lambda: False)
    assert torch.equal(qconv.maxpool(x, kernel, stride, padding), want)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="padding must be at most half the kernel"):
        torch.ops.torchslim.qmaxpool(x, [2, 2], [1, 1], [2, 2])


def test_layer_plan_follows_buffer_writes_and_is_not_copied(compiled, monkeypatch):
    """A layer's C++ plan (its packed weight and constants) is rebuilt after ``load_state_dict`` (an in-place
    write), a replaced buffer and a changed output dtype; a model copied under inference mode (buffers without
    version counters) runs; a deep copy of a layer that has run gives the same
    outputs, and a pickled cache entry carries no plan (a C++ object of this process)."""
    import copy
    import pickle

    from torchslim.api import compress_
    from torchslim.core.context import Context
    from torchslim.quantization.int8.static import Int8Static

    if compiled != "avx512-vnni":
        pytest.skip("the plans serve the AVX-512 VNNI / AMX paths")
    torch.manual_seed(0)
    model, other = _SqueezeNet().eval(), _SqueezeNet().eval()
    calib = [(torch.randn(4, 3, 16, 16),) for _ in range(2)]
    compress_(model, Int8Static(), ctx=Context(calibration=calib))
    compress_(other, Int8Static(), ctx=Context(calibration=calib))
    monkeypatch.setattr(qconv, "amx", lambda: True)  # every 1×1 layer on a plan
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        frozen = copy.deepcopy(other)  # its buffers are inference tensors: no version counters
        before, theirs = model(x), other(x)
        assert torch.equal(frozen(x), theirs)
        grow_input = model.act(model.reduce(model.pool(model.expand(x))))
        twin = copy.deepcopy(model.grow)  # a layer that ran on its plan (oneDNN's packed weights cannot be copied)
        assert torch.equal(twin(grow_input), model.grow(grow_input))
        cached = model.grow.__dict__["_qconv"]  # a pickled module carries an empty cache entry
        assert cached.plan is not None and pickle.loads(pickle.dumps(cached)).plan is None
        assert not torch.equal(before, theirs)
        model.load_state_dict(other.state_dict())
        assert torch.equal(model(x), theirs)
        grow = model.grow
        grow.weight = grow.weight.neg()  # a replaced buffer
        assert not torch.equal(model(x), theirs)
        grow.output_uint8 = not grow.output_uint8
        y = grow(grow_input)
        assert y.dtype == (torch.uint8 if grow.output_uint8 else torch.float32)
