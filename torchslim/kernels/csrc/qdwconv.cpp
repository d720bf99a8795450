// The static int8 depthwise convolution (groups = channels, one filter per channel) on channels-last uint8
// codes, with the epilogue of qepilogue.h. The schema is defined in torchslim/kernels/ops.py, the weight
// layout in torchslim/kernels/qdwconv.py.
//
// Per output pixel m and channel c (x: uint8 codes with zero point zx; w: int8 taps; T: the taps inside the
// image, padding reads as zero in real values):
//   acc = sum_{t in T} x[t, c] * w[t, c] - zx * sum_{t in T} w[t, c]        exact int32
// then the epilogue of the 1×1 kernels (scale, bias, activation, uint8 codes or float32).
//
// Written by hand because oneDNN's int8 depthwise call (the alternative through torch) pays a per-call setup
// that outweighs the arithmetic of small calls (batch-1 MobileNet / EfficientNet layers); larger calls stay on
// oneDNN (see static_small.DEPTHWISE_MACS).
//
// Weights are int8 [kh, nq, Cp, 4] (nq = ceil(kw / 4) quads of taps per kernel row, Cp: the channels rounded
// up to 16; zero past kw and past C), so one 64-byte vector holds 4 taps of 16 channels. The fast loop
// (AVX-512 VNNI + VBMI) reads a copy of the input padded with the zero point and blocked by 16 channels,
// [N, H + 2·ph, Cp / 16, W + 2·pw + 4·nq, 16]: 4 neighbouring pixels of a block are 64 contiguous bytes, and
// one vpermb turns them into the 16 channels' quads of codes that vpdpbusd multiplies with a quad of taps
// (4 exact products summed per lane, uint8 × int8). Every window lies inside the padded copy, so the
// zero-point term is zx · wsum[c] (all taps); the columns past the padded width meet zero taps. The portable
// loop reads the unpadded input, skips the taps outside the image and sums the weights it reads.

#include "qepilogue.h"

namespace {

struct DwGeom {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cp, nq;
};

// The taps [lo, hi) of one dimension that fall inside [0, size) for an output at input offset start.
inline void tap_range(int64_t start, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, -start);
  hi = std::min<int64_t>(k, size - start);
}

void dw_rows_portable(const uint8_t* x, const int8_t* w, int32_t zx, const DwGeom& g, const Epilogue& e, int64_t r0,
                      int64_t r1, void* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.oh, oy = r % g.oh, iy0 = oy * g.sh - g.ph;
    int64_t ilo, ihi;
    tap_range(iy0, g.kh, g.h, ilo, ihi);
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      const int64_t ix0 = ox * g.sw - g.pw, m = r * g.ow + ox;
      int64_t jlo, jhi;
      tap_range(ix0, g.kw, g.w, jlo, jhi);
      for (int64_t ch = 0; ch < g.c; ++ch) {
        int32_t acc = 0, ws = 0;
        for (int64_t i = ilo; i < ihi; ++i)
          for (int64_t j = jlo; j < jhi; ++j) {
            const int32_t wt = w[((i * g.nq + j / 4) * g.cp + ch) * 4 + j % 4];
            acc += static_cast<int32_t>(x[((b * g.h + iy0 + i) * g.w + ix0 + j) * g.c + ch]) * wt;
            ws += wt;
          }
        store_scalar(e, static_cast<float>(acc - zx * ws), m, ch, g.c, y);
      }
    }
  }
}

#ifdef TS_QX86
// Output pixels per block: as many independent accumulators, sharing each quad of taps' load.
constexpr int kPixels = 8;

// vpermb's index: lane c (4 bytes) takes byte c of each of the 4 pixels [16 channels] in a 64-byte vector.
struct alignas(64) QuadIndex {
  uint8_t b[64];
  constexpr QuadIndex() : b() {
    for (int c = 0; c < 16; ++c)
      for (int t = 0; t < 4; ++t) b[4 * c + t] = static_cast<uint8_t>(16 * t + c);
  }
};
constexpr QuadIndex kQuadIndex{};

// The exact sums of P output pixels of one 16-channel block into out[P][16]: xb points at the block's input
// row of the first output's window (16 bytes a pixel, kernel rows rs bytes apart), wb at its quads of taps
// (kernel rows nq · wq bytes apart, quads wq).
template <int P>
TS_QVBMI __attribute__((noinline)) void dw_block(const uint8_t* xb, const int8_t* wb, int64_t kh, int64_t nq,
                                                 int64_t sw, int64_t rs, int64_t wq, int32_t* out) {
  // The accumulators as two arrays of at most 4 (256 bytes each): GCC keeps a larger array of vectors
  // (8 · 64 bytes) on the stack, zeroed by a rep stos at every call, beside its registers.
  constexpr int L = P < 4 ? P : 4, H = P - L;
  const __m512i idx = _mm512_load_si512(kQuadIndex.b);
  __m512i lo[L], hi[H > 0 ? H : 1];
  for (int p = 0; p < L; ++p) lo[p] = _mm512_setzero_si512();
  for (int p = 0; p < H; ++p) hi[p] = _mm512_setzero_si512();
  for (int64_t i = 0; i < kh; ++i) {
    const uint8_t* xr = xb + i * rs;
    const int8_t* wr = wb + i * nq * wq;
    for (int64_t q = 0; q < nq; ++q) {
      const __m512i wv = _mm512_loadu_si512(wr + q * wq);
      const uint8_t* xq = xr + q * 64;
      for (int p = 0; p < L; ++p)
        lo[p] = _mm512_dpbusd_epi32(lo[p], _mm512_permutexvar_epi8(idx, _mm512_loadu_si512(xq + p * sw * 16)), wv);
      for (int p = 0; p < H; ++p)
        hi[p] = _mm512_dpbusd_epi32(hi[p], _mm512_permutexvar_epi8(idx, _mm512_loadu_si512(xq + (L + p) * sw * 16)), wv);
    }
  }
  for (int p = 0; p < L; ++p) _mm512_storeu_si512(out + p * 16, lo[p]);
  for (int p = 0; p < H; ++p) _mm512_storeu_si512(out + (L + p) * 16, hi[p]);
}

using DwBlockFn = void (*)(const uint8_t*, const int8_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t*);
constexpr DwBlockFn kBlocks[kPixels] = {&dw_block<1>, &dw_block<2>, &dw_block<3>, &dw_block<4>,
                                        &dw_block<5>, &dw_block<6>, &dw_block<7>, &dw_block<8>};

// Output rows [r0, r1) from the blocked copy xb (rows wpa pixels wide); g is the padded geometry.
template <Act A>
TS_QVBMI void dw_rows_vbmi(const uint8_t* xb, const int8_t* w, const int32_t* wsum, int32_t zx, const DwGeom& g,
                           int64_t wpa, const Epilogue& e, int64_t r0, int64_t r1, void* y) {
  const EpiVec ev = epi_vec(e);
  const __m512i zxv = _mm512_set1_epi32(zx);
  const int64_t cb = g.cp / 16, rs = cb * wpa * 16, wq = g.cp * 4;
  alignas(64) int32_t sums[kPixels * 16];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row0 = (r / g.oh) * g.h + (r % g.oh) * g.sh;  // the window's first (padded) input row
    for (int64_t b = 0; b < cb; ++b) {
      const int64_t c0 = b * 16;
      const __mmask16 mask = tail_mask(g.c - c0);
      const __m512 sc = _mm512_maskz_loadu_ps(mask, e.scale + c0), bi = _mm512_maskz_loadu_ps(mask, e.bias + c0);
      const __m512i full = _mm512_mullo_epi32(_mm512_loadu_si512(wsum + c0), zxv);
      const uint8_t* xr = xb + (row0 * cb + b) * wpa * 16;
      for (int64_t ox = 0; ox < g.ow; ox += kPixels) {
        const int pixels = static_cast<int>(std::min<int64_t>(kPixels, g.ow - ox));
        kBlocks[pixels - 1](xr + ox * g.sw * 16, w + c0 * 4, g.kh, g.nq, g.sw, rs, wq, sums);
        __m512 v[kPixels];
        for (int p = 0; p < pixels; ++p) v[p] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums + p * 16), full));
        store16_rows<A>(ev, v, pixels, sc, bi, r * g.ow + ox, c0, g.c, mask, y);
      }
    }
  }
}

using DwRowsFn = void (*)(const uint8_t*, const int8_t*, const int32_t*, int32_t, const DwGeom&, int64_t,
                          const Epilogue&, int64_t, int64_t, void*);

DwRowsFn dw_rows_for(Act act) {
  switch (act) {
    case Act::kRelu:
      return &dw_rows_vbmi<Act::kRelu>;
    case Act::kHardswish:
      return &dw_rows_vbmi<Act::kHardswish>;
    case Act::kSwish:
      return &dw_rows_vbmi<Act::kSwish>;
    default:
      return &dw_rows_vbmi<Act::kNone>;
  }
}

// Image rows [y0, y1) (over all images) of x [N, H, W, C] into the blocked copy (already filled with zx).
TS_QVBMI void block_rows(const uint8_t* x, uint8_t* xb, const DwGeom& g, int64_t hp, int64_t wpa, int64_t y0,
                         int64_t y1) {
  const int64_t cb = g.cp / 16;
  for (int64_t r = y0; r < y1; ++r) {
    const int64_t img = r / g.h, iy = r % g.h;
    const uint8_t* src = x + r * g.w * g.c;
    for (int64_t b = 0; b < cb; ++b) {
      const __mmask16 mask = tail_mask(g.c - b * 16);
      uint8_t* dst = xb + (((img * hp + iy + g.ph) * cb + b) * wpa + g.pw) * 16;
      for (int64_t px = 0; px < g.w; ++px)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + px * 16), _mm_maskz_loadu_epi8(mask, src + px * g.c + b * 16));
    }
  }
}
#endif

at::Tensor dwconv_cpu(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& weight,
                      const at::Tensor& wsum, const at::Tensor& scale, const at::Tensor& bias, at::IntArrayRef kernel,
                      at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view act, double out_scale,
                      int64_t out_zp, bool out_u8, c10::string_view isa) {
  TORCH_CHECK(x_in.dim() == 4 && (x_in.scalar_type() == at::kByte || x_in.scalar_type() == at::kFloat),
              "qdwconv: x must be uint8 codes or float32 values [N, C, H, W]");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, "qdwconv: 2 values per argument");
  TORCH_CHECK(kernel[0] > 0 && kernel[1] > 0 && stride[0] > 0 && stride[1] > 0 && padding[0] >= 0 && padding[1] >= 0,
              "qdwconv: kernel and stride must be positive, padding non-negative");
  TORCH_CHECK(x_zp >= 0 && x_zp <= 255 && out_zp >= 0 && out_zp <= 255 && out_scale > 0 && x_scale > 0,
              "qdwconv: zero points must be in 0..255 and scales positive");
  const int64_t c = x_in.size(1), cp = (c + 15) / 16 * 16, nq = (kernel[1] + 3) / 4;
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 4 &&
                  weight.size(0) == kernel[0] && weight.size(1) == nq && weight.size(2) == cp && weight.size(3) == 4,
              "qdwconv: weight must be contiguous int8 [kh, ceil(kw / 4), C rounded up to 16, 4]");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.is_contiguous() && wsum.numel() == cp,
              "qdwconv: wsum must be contiguous int32 [C rounded up to 16]");
  check_vec(scale, c, "scale");
  check_vec(bias, c, "bias");
  const std::string s(isa);
  TORCH_CHECK(s == "auto" || s == "portable" || s == "avx512-vnni", "qdwconv: unknown isa '", s,
              "' (auto, avx512-vnni, portable)");
  TORCH_CHECK(s != "avx512-vnni" || vbmi_cpu(), "qdwconv: this CPU lacks avx512-vnni or avx512-vbmi");
  const bool fast = s != "portable" && vbmi_cpu();
  const at::Tensor x = x_in.scalar_type() == at::kByte ? x_in.contiguous(at::MemoryFormat::ChannelsLast)
                                                       : quantize_input(x_in.contiguous(at::MemoryFormat::ChannelsLast),
                                                                        x_scale, x_zp, fast);
  DwGeom g{x.size(0), c, x.size(2), x.size(3), 0, 0, kernel[0], kernel[1], stride[0], stride[1], padding[0],
           padding[1], cp, nq};
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  TORCH_CHECK(g.oh > 0 && g.ow > 0, "qdwconv: the kernel is larger than the padded input");
  at::Tensor y = at::empty({g.n, c, g.oh, g.ow}, x.options()
                                                     .dtype(out_u8 ? at::kByte : at::kFloat)
                                                     .memory_format(at::MemoryFormat::ChannelsLast));
  const Epilogue e = make_epilogue(scale, bias, act, out_scale, out_zp, out_u8);
  const uint8_t* xp = x.data_ptr<uint8_t>();
  const int8_t* wp = weight.data_ptr<int8_t>();
  void* yp = y.data_ptr();
  const int32_t zx = static_cast<int32_t>(x_zp);
  // Output rows per task: about 2^18 multiply-adds each, so a small call stays on the calling thread.
  const int64_t per_row = std::max<int64_t>(1, g.ow * c * g.kh * g.kw);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / per_row);
#ifdef TS_QX86
  if (fast) {
    // The blocked copy padded with the zero point (zero in real values); rows 4·nq pixels longer, which the
    // last windows' 64-byte reads reach, and meet zero taps there.
    const int64_t hp = g.h + 2 * g.ph, wpa = g.w + 2 * g.pw + 4 * nq;
    at::Tensor xb = at::empty({g.n * hp * (cp / 16) * wpa * 16}, x.options().memory_format(at::MemoryFormat::Contiguous));
    uint8_t* xbp = xb.data_ptr<uint8_t>();
    std::memset(xbp, static_cast<int>(x_zp), static_cast<size_t>(xb.numel()));
    const int64_t row_bytes = std::max<int64_t>(1, g.w * cp);
    at::parallel_for(0, g.n * g.h, std::max<int64_t>(1, kSerialBytes / row_bytes),
                     [&](int64_t y0, int64_t y1) { block_rows(xp, xbp, g, hp, wpa, y0, y1); });
    DwGeom gp = g;
    gp.h = hp;
    gp.w = g.w + 2 * g.pw;
    gp.ph = gp.pw = 0;
    const DwRowsFn fn = dw_rows_for(e.act);
    const int32_t* sp = wsum.data_ptr<int32_t>();
    at::parallel_for(0, g.n * g.oh, grain, [&](int64_t r0, int64_t r1) { fn(xbp, wp, sp, zx, gp, wpa, e, r0, r1, yp); });
    return y;
  }
#endif
  at::parallel_for(0, g.n * g.oh, grain,
                   [&](int64_t r0, int64_t r1) { dw_rows_portable(xp, wp, zx, g, e, r0, r1, yp); });
  return y;
}

}  // namespace

// Whether the AVX-512 VNNI + VBMI loops (this one, the few-channel im2col) run here; the Python routes check it.
extern "C" int torchslim_vbmi() { return vbmi_cpu() ? 1 : 0; }

TORCH_LIBRARY_IMPL(torchslim, CPU, m) { m.impl("qdwconv", &dwconv_cpu); }
