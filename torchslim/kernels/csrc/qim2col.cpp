// im2col of uint8 codes (or float32 values, quantized on the way) for the static int8 convolutions: a k × k or
// strided convolution runs as the 1×1 GEMM of qconv.cpp on the unfolded rows. The schema is defined in
// torchslim/kernels/ops.py.

#include "qepilogue.h"

namespace {

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0

// cols[n, (i·kw + j)·C + c, oh, ow] = x[n, c, oh·sh − ph + i, ow·sw − pw + j], or zp outside the image (zero
// padding in real values); channels-last in and out, so each output pixel's row of kh·kw·C bytes is contiguous.
// Float32 values are quantized first with (scale, zp), as qconv1x1 does its float inputs.
#ifdef TS_QX86
// Few-channel float32 images (a network's stem: 1 to 4 channels, NCHW): codes and im2col rows straight from the
// planes. Pass 1 quantizes each image row into a copy padded with the zero point, channels-last: 16 pixels a
// step, the channels' 16 codes interleaved by one vpermb. Pass 2 copies each output pixel's kernel rows from
// it, kw · c contiguous bytes each (at most 64: one masked load and store); a 1 × 1 unfold is pass 1 alone
// (the image's codes, channels-last, as oneDNN's stem convolution reads them). Without this, the image went
// through a channels-last float copy and then a byte-by-byte unfold, which together took longer than
// oneDNN's convolution of the stem.
constexpr int64_t kStemChannels = 4;

TS_QVBMI void stem_quantize_rows(const float* x, uint8_t* xq, int64_t c, int64_t h, int64_t w, int64_t hp,
                                 int64_t wp, int64_t ph, int64_t pw, float inv, int32_t zp, int64_t r0, int64_t r1) {
  alignas(64) uint8_t index[64] = {};
  for (int64_t k = 0; k < 16 * c; ++k) index[k] = static_cast<uint8_t>((k % c) * 16 + k / c);  // pixel k / c, channel k % c
  const __m512i idx = _mm512_load_si512(index);
  const __m512 iv = _mm512_set1_ps(inv);
  const __m512i z = _mm512_set1_epi32(zp);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t img = r / h, y = r % h;
    uint8_t* dst = xq + ((img * hp + y + ph) * wp + pw) * c;
    for (int64_t x0 = 0; x0 < w; x0 += 16) {
      const int64_t count = std::min<int64_t>(16, w - x0);
      const __mmask16 m16 = tail_mask(count);
      __m512i codes = _mm512_setzero_si512();
      for (int64_t ch = 0; ch < c; ++ch) {
        const __m512 v = _mm512_maskz_loadu_ps(m16, x + ((img * c + ch) * h + y) * w + x0);
        const __m128i q = to_codes(v, iv, z);  // channel ch: quarter ch of the vector
        switch (ch) {
          case 0:
            codes = _mm512_inserti32x4(codes, q, 0);
            break;
          case 1:
            codes = _mm512_inserti32x4(codes, q, 1);
            break;
          case 2:
            codes = _mm512_inserti32x4(codes, q, 2);
            break;
          default:
            codes = _mm512_inserti32x4(codes, q, 3);
        }
      }
      const __mmask64 m64 = count * c >= 64 ? ~0ull : ((1ull << (count * c)) - 1ull);
      _mm512_mask_storeu_epi8(dst + x0 * c, m64, _mm512_permutexvar_epi8(idx, codes));
    }
  }
}

TS_QVBMI void stem_unfold_rows(const uint8_t* xq, uint8_t* cols, int64_t c, int64_t hp, int64_t wp, int64_t oh,
                               int64_t ow, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t r0, int64_t r1) {
  const int64_t run = kw * c, k = kh * run;
  const __mmask64 mask = run >= 64 ? ~0ull : ((1ull << run) - 1ull);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t img = r / oh, yo = r % oh;
    const uint8_t* src = xq + (img * hp + yo * sh) * wp * c;
    uint8_t* dst = cols + r * ow * k;
    for (int64_t xo = 0; xo < ow; ++xo, dst += k) {
      const uint8_t* s = src + xo * sw * c;
      for (int64_t i = 0; i < kh; ++i)
        _mm512_mask_storeu_epi8(dst + i * run, mask, _mm512_maskz_loadu_epi8(mask, s + i * wp * c));
    }
  }
}
#endif

at::Tensor im2col_cpu(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                      int64_t zp, double scale) {
  TORCH_CHECK(x_in.dim() == 4 && (x_in.scalar_type() == at::kByte || x_in.scalar_type() == at::kFloat) &&
                  (x_in.is_contiguous(at::MemoryFormat::ChannelsLast) ||
                   (x_in.scalar_type() == at::kFloat && x_in.is_contiguous())),
              "qim2col: x must be channels-last uint8 codes or float32 values (or contiguous float32) [N, C, H, W]");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, "qim2col: 2 values per argument");
  TORCH_CHECK(zp >= 0 && zp <= 255 && scale > 0, "qim2col: zp must be in 0..255 and scale positive");
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3), kh = kernel[0], kw = kernel[1];
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0, "qim2col: invalid kernel, stride or padding");
  const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "qim2col: the kernel is larger than the padded input");
  at::Tensor cols = at::empty({n, kh * kw * c, oh, ow}, x_in.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
#ifdef TS_QX86
  if (x_in.scalar_type() == at::kFloat && x_in.is_contiguous() && c <= kStemChannels && kw * c <= 64 && vbmi_cpu()) {
    const float* xp = x_in.data_ptr<float>();
    const float inv = static_cast<float>(1.0 / scale);
    const int64_t bytes = x_in.numel() * 4;
    if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {  // the codes alone, channels-last
      stream_rows(bytes, n * h, [&](int64_t r0, int64_t r1) {
        stem_quantize_rows(xp, cols.data_ptr<uint8_t>(), c, h, w, h, w, 0, 0, inv, static_cast<int32_t>(zp), r0, r1);
      });
      return cols;
    }
    const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
    at::Tensor xq = at::empty({n * hp * wp * c}, cols.options().memory_format(at::MemoryFormat::Contiguous));
    uint8_t* xqp = xq.data_ptr<uint8_t>();
    std::memset(xqp, static_cast<int>(zp), static_cast<size_t>(xq.numel()));
    stream_rows(bytes, n * h, [&](int64_t r0, int64_t r1) {
      stem_quantize_rows(xp, xqp, c, h, w, hp, wp, ph, pw, inv, static_cast<int32_t>(zp), r0, r1);
    });
    stream_rows(bytes, n * oh, [&](int64_t r0, int64_t r1) {
      stem_unfold_rows(xqp, cols.data_ptr<uint8_t>(), c, hp, wp, oh, ow, kh, kw, sh, sw, r0, r1);
    });
    return cols;
  }
#endif
  const at::Tensor x_cl = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = x_cl.scalar_type() == at::kByte ? x_cl : quantize_input(x_cl, scale, zp, vnni_cpu());
  const uint8_t* xp = x.data_ptr<uint8_t>();
  uint8_t* cp = cols.data_ptr<uint8_t>();
  // The geometry as by-value captures: the byte stores below may alias anything, so values reached through
  // references would be loaded again after each store.
  auto rows = [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / oh, y = r % oh;
      if (kw * c < 32) {  // a few bytes a kernel row (1- or 3-channel inputs): tap by tap over the output row
        uint8_t* out = cp + r * ow * kh * kw * c;
        const int64_t stride_px = kh * kw * c;
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t ih = y * sh - ph + i;
          for (int64_t j = 0; j < kw; ++j) {
            uint8_t* dst = out + (i * kw + j) * c;
            // Output columns whose tap lands inside the image: xo · sw − pw + j in [0, w).
            int64_t lo = 0, hi = 0;
            if (ih >= 0 && ih < h) {
              lo = std::min<int64_t>(ow, std::max<int64_t>(0, -floor_div(j - pw, sw)));
              hi = std::max<int64_t>(lo, std::min<int64_t>(ow, floor_div(w - 1 + pw - j, sw) + 1));
            }
            const uint8_t* src = xp + ((img * h + std::max<int64_t>(ih, 0)) * w) * c;
            for (int64_t xo = 0; xo < lo; ++xo)
              for (int64_t ch = 0; ch < c; ++ch) dst[xo * stride_px + ch] = static_cast<uint8_t>(zp);
            for (int64_t xo = lo; xo < hi; ++xo)
              for (int64_t ch = 0; ch < c; ++ch) dst[xo * stride_px + ch] = src[(xo * sw - pw + j) * c + ch];
            for (int64_t xo = hi; xo < ow; ++xo)
              for (int64_t ch = 0; ch < c; ++ch) dst[xo * stride_px + ch] = static_cast<uint8_t>(zp);
          }
        }
        continue;
      }
      for (int64_t xo = 0; xo < ow; ++xo) {
        uint8_t* dst = cp + (r * ow + xo) * kh * kw * c;
        // Per kernel row, the taps inside the image are adjacent pixels: one run of bytes, padding around it.
        const int64_t iw0 = xo * sw - pw, j0 = std::max<int64_t>(0, -iw0), j1 = std::min<int64_t>(kw, w - iw0);
        for (int64_t i = 0; i < kh; ++i, dst += kw * c) {
          const int64_t ih = y * sh - ph + i;
          if (ih < 0 || ih >= h || j1 <= j0) {
            std::memset(dst, static_cast<int>(zp), kw * c);
            continue;
          }
          std::memset(dst, static_cast<int>(zp), j0 * c);
          const uint8_t* src = xp + ((img * h + ih) * w + iw0 + j0) * c;
          std::memcpy(dst + j0 * c, src, (j1 - j0) * c);
          std::memset(dst + j1 * c, static_cast<int>(zp), (kw - j1) * c);
        }
      }
    }
  };
  stream_rows(cols.numel(), n * oh, rows);
  return cols;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchslim, CPU, m) { m.impl("qim2col", &im2col_cpu); }
