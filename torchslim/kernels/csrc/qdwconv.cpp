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
// that outweighs the arithmetic of small calls (batch-1 MobileNet / EfficientNet layers on 7 × 7 to 28 × 28
// maps); larger calls stay on oneDNN (see static_small.DEPTHWISE_MACS). Weights are int32 [taps, Cp] (Cp: the channels
// rounded up to 16, zero-padded), so each tap of 16 channels is one 64-byte vector: with the input's 16
// codes widened to int32 lanes, vpdpwssd (AVX-512 VNNI: pairs of int16 products summed into int32; each
// lane's upper int16 is zero on both sides) adds the 16 exact products in one instruction. That loop reads a
// copy of the input padded with the zero point, so every window lies inside and the zero-point term is
// zx · wsum[c] (all taps); the portable loop skips the taps outside the image and sums the weights it reads.

#include "qepilogue.h"

namespace {

struct DwGeom {
  int64_t n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cp;
};

// The taps [lo, hi) of one dimension that fall inside [0, size) for an output at input offset start.
inline void tap_range(int64_t start, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, -start);
  hi = std::min<int64_t>(k, size - start);
}

void dw_rows_portable(const uint8_t* x, const int32_t* w, int32_t zx, const DwGeom& g, const Epilogue& e, int64_t r0,
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
            const int32_t wt = w[(i * g.kw + j) * g.cp + ch];
            acc += static_cast<int32_t>(x[((b * g.h + iy0 + i) * g.w + ix0 + j) * g.c + ch]) * wt;
            ws += wt;
          }
        store_scalar(e, static_cast<float>(acc - zx * ws), m, ch, g.c, y);
      }
    }
  }
}

#ifdef TS_QX86
// Output pixels per step of the inner loop: as many independent accumulator chains (vpdpwssd's latency is
// several cycles; one chain per pixel would wait on it at every tap), sharing each tap's weight load.
constexpr int kPixels = 8;

// 16 codes widened to int32 lanes; a whole block reads them without a mask (one instruction fewer).
template <bool Full>
TS_Q512 inline __m512i codes16(const uint8_t* p, __mmask16 mask) {
  if constexpr (Full) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p));
  }
}

// Output columns [ox, ox_hi) of row r whose windows lie inside the image, P at a time; returns the first
// column not done (fewer than P left).
template <Act A, bool Full, int P = kPixels>
TS_Q512 inline int64_t dw_inside(const uint8_t* x, const int32_t* wc, __m512i full, const DwGeom& g, const EpiVec& ev,
                                 __m512 sc, __m512 bi, __mmask16 mask, int64_t row0, int64_t r, int64_t ox,
                                 int64_t ox_hi, int64_t c0, void* y) {
  const int64_t step = g.sw * g.c;
  for (; ox + P <= ox_hi; ox += P) {
    __m512i acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_si512();
    for (int64_t i = 0; i < g.kh; ++i) {
      const uint8_t* xr = x + ((row0 + i) * g.w + ox * g.sw - g.pw) * g.c + c0;
      const int32_t* wr = wc + i * g.kw * g.cp;
      for (int64_t j = 0; j < g.kw; ++j) {
        const __m512i wv = _mm512_loadu_si512(wr + j * g.cp);
        const uint8_t* xt = xr + j * g.c;
        for (int p = 0; p < P; ++p) acc[p] = _mm512_dpwssd_epi32(acc[p], codes16<Full>(xt + p * step, mask), wv);
      }
    }
    for (int p = 0; p < P; ++p)
      store16<A>(ev, _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[p], full)), sc, bi, r * g.ow + ox + p, c0, g.c, mask, y);
  }
  return ox;
}

template <Act A>
TS_Q512 void dw_rows_vnni(const uint8_t* x, const int32_t* w, const int32_t* wsum, int32_t zx, const DwGeom& g,
                          const Epilogue& e, int64_t r0, int64_t r1, void* y) {
  // Called on an unpadded geometry (dwconv_cpu pads the input first): every window lies inside.
  const EpiVec ev = epi_vec(e);
  const __m512i zxv = _mm512_set1_epi32(zx);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row0 = (r / g.oh) * g.h + (r % g.oh) * g.sh;  // the window's first input row
    for (int64_t c0 = 0; c0 < g.c; c0 += 16) {
      const __mmask16 mask = tail_mask(g.c - c0);
      const __m512 sc = _mm512_maskz_loadu_ps(mask, e.scale + c0), bi = _mm512_maskz_loadu_ps(mask, e.bias + c0);
      const __m512i full = _mm512_mullo_epi32(_mm512_loadu_si512(wsum + c0), zxv);
      const int32_t* wc = w + c0;
      // kPixels windows a step, then the columns left 4, 2 and 1 at a time (small maps have only these).
      int64_t ox = 0;
      if (mask == 0xFFFF) {
        ox = dw_inside<A, true>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        ox = dw_inside<A, true, 4>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        ox = dw_inside<A, true, 2>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        dw_inside<A, true, 1>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
      } else {
        ox = dw_inside<A, false>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        ox = dw_inside<A, false, 4>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        ox = dw_inside<A, false, 2>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
        dw_inside<A, false, 1>(x, wc, full, g, ev, sc, bi, mask, row0, r, ox, g.ow, c0, y);
      }
    }
  }
}

using DwRowsFn = void (*)(const uint8_t*, const int32_t*, const int32_t*, int32_t, const DwGeom&, const Epilogue&,
                          int64_t, int64_t, void*);

DwRowsFn dw_rows_for(Act act) {
  switch (act) {
    case Act::kRelu:
      return &dw_rows_vnni<Act::kRelu>;
    case Act::kHardswish:
      return &dw_rows_vnni<Act::kHardswish>;
    case Act::kSwish:
      return &dw_rows_vnni<Act::kSwish>;
    default:
      return &dw_rows_vnni<Act::kNone>;
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
  const int64_t c = x_in.size(1), cp = (c + 15) / 16 * 16, taps = kernel[0] * kernel[1];
  TORCH_CHECK(weight.scalar_type() == at::kInt && weight.is_contiguous() && weight.dim() == 2 &&
                  weight.size(0) == taps && weight.size(1) == cp,
              "qdwconv: weight must be contiguous int32 [kh·kw, C rounded up to 16]");
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.is_contiguous() && wsum.numel() == cp,
              "qdwconv: wsum must be contiguous int32 [C rounded up to 16]");
  check_vec(scale, c, "scale");
  check_vec(bias, c, "bias");
  const std::string s(isa);
  TORCH_CHECK(s == "auto" || s == "portable" || s == "avx512-vnni", "qdwconv: unknown isa '", s,
              "' (auto, avx512-vnni, portable)");
  TORCH_CHECK(s != "avx512-vnni" || vnni_cpu(), "qdwconv: this CPU lacks avx512-vnni");
  const bool vnni = s != "portable" && vnni_cpu();
  const at::Tensor x = x_in.scalar_type() == at::kByte ? x_in.contiguous(at::MemoryFormat::ChannelsLast)
                                                       : quantize_input(x_in.contiguous(at::MemoryFormat::ChannelsLast),
                                                                        x_scale, x_zp, vnni);
  DwGeom g{x.size(0), c, x.size(2), x.size(3), 0, 0, kernel[0], kernel[1], stride[0], stride[1], padding[0],
           padding[1], cp};
  g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
  TORCH_CHECK(g.oh > 0 && g.ow > 0, "qdwconv: the kernel is larger than the padded input");
  at::Tensor xpad = x;
#ifdef TS_QX86
  if (vnni && (g.ph > 0 || g.pw > 0)) {
    // The VNNI loop reads a copy padded with the zero point (zero in real values): every window then lies
    // inside, and all pixels take the whole-window path. On the small maps this kernel is routed to (batch 1,
    // 7 × 7 to 28 × 28 late in MobileNet / EfficientNet) most windows would otherwise cross the border.
    const int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw;
    xpad = at::empty({g.n, hp, wp, c}, x.options());
    uint8_t* dst = xpad.data_ptr<uint8_t>();
    const uint8_t* src = x.data_ptr<uint8_t>();
    std::memset(dst, static_cast<int>(x_zp), static_cast<size_t>(xpad.numel()));
    for (int64_t b = 0; b < g.n; ++b)
      for (int64_t i = 0; i < g.h; ++i)
        std::memcpy(dst + ((b * hp + i + g.ph) * wp + g.pw) * c, src + ((b * g.h + i) * g.w) * c,
                    static_cast<size_t>(g.w * c));
    g.h = hp;
    g.w = wp;
    g.ph = g.pw = 0;
  }
#endif
  at::Tensor y = at::empty({g.n, c, g.oh, g.ow}, x.options()
                                                     .dtype(out_u8 ? at::kByte : at::kFloat)
                                                     .memory_format(at::MemoryFormat::ChannelsLast));
  const Epilogue e = make_epilogue(scale, bias, act, out_scale, out_zp, out_u8);
  const uint8_t* xp = xpad.data_ptr<uint8_t>();
  const int32_t* wp = weight.data_ptr<int32_t>();
  const int32_t* sp = wsum.data_ptr<int32_t>();
  void* yp = y.data_ptr();
  const int32_t zx = static_cast<int32_t>(x_zp);
  // Output rows per task: about 2^18 multiply-adds each, so a small call stays on the calling thread.
  const int64_t per_row = std::max<int64_t>(1, g.ow * c * taps);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / per_row);
#ifdef TS_QX86
  if (vnni) {
    const DwRowsFn fn = dw_rows_for(e.act);
    at::parallel_for(0, g.n * g.oh, grain, [&](int64_t r0, int64_t r1) { fn(xp, wp, sp, zx, g, e, r0, r1, yp); });
    return y;
  }
#endif
  at::parallel_for(0, g.n * g.oh, grain,
                   [&](int64_t r0, int64_t r1) { dw_rows_portable(xp, wp, zx, g, e, r0, r1, yp); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchslim, CPU, m) { m.impl("qdwconv", &dwconv_cpu); }
