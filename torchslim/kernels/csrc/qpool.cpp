// Pooling of channels-last uint8 codes. The schemas are defined in torchslim/kernels/ops.py.
// - qavgpool: the global average pool (the squeeze of a squeeze-and-excitation block, Hu et al. 2018,
//   arXiv:1709.01507, and a classifier head's pool) to float32 values, reading the codes once as bytes:
//     y[b, c] = (sum_p x[b, p, c] / P − zx) · sx          (P pixels; the sum exact in int32)
//   torch's mean over a uint8 map with dtype=float32 first writes the whole map as float32 (four times the
//   bytes) and reduces it afterwards.
// - qmaxpool: a k × k max-pool (a ResNet stem's 3 × 3 / 2, He et al. 2015, arXiv:1512.03385) on the codes,
//   exact since quantization is monotonic: each output pixel's channels are the byte-wise maximum of its
//   window's pixels (taps in the padding skipped), 64 channels a vector, and the output rows are split over
//   the threads. torch's quantized max-pool runs on one thread.

#include "qepilogue.h"

namespace {

constexpr int64_t kChunk = 64;  // channels per work item: four int32 vectors of 16

void pool_portable(const uint8_t* x, int64_t pixels, int64_t c, int64_t width, int32_t* sums) {
  std::fill(sums, sums + width, 0);
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t j = 0; j < width; ++j) sums[j] += x[p * c + j];
  }
}

#ifdef TS_QX86
// 64 channels per pixel row: four 16-byte quarters widened to int32 and added; a masked load for a tail.
TS_Q512 void pool_vnni(const uint8_t* x, int64_t pixels, int64_t c, int64_t width, int32_t* sums) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  const __mmask64 mask = width >= 64 ? ~0ull : ((1ull << width) - 1ull);
  for (int64_t p = 0; p < pixels; ++p) {
    const __m512i v = _mm512_maskz_loadu_epi8(mask, x + p * c);
    acc[0] = _mm512_add_epi32(acc[0], _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 0)));
    acc[1] = _mm512_add_epi32(acc[1], _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 1)));
    acc[2] = _mm512_add_epi32(acc[2], _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 2)));
    acc[3] = _mm512_add_epi32(acc[3], _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(v, 3)));
  }
  for (int q = 0; q < 4; ++q) {
    const int64_t n = std::min<int64_t>(16, width - 16 * q);
    if (n > 0) _mm512_mask_storeu_epi32(sums + 16 * q, tail_mask(n), acc[q]);
  }
}
#endif

at::Tensor avgpool_cpu(const at::Tensor& x, double scale, int64_t zp) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kByte && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "qavgpool: x must be channels-last uint8 codes [N, C, H, W]");
  TORCH_CHECK(zp >= 0 && zp <= 255 && scale > 0, "qavgpool: zp must be in 0..255 and scale positive");
  const int64_t b = x.size(0), c = x.size(1), pixels = x.size(2) * x.size(3);
  TORCH_CHECK(pixels > 0 && pixels <= (int64_t{1} << 23), "qavgpool: 1 to 2^23 pixels per image (int32 sums)");
  at::Tensor y = at::empty({b, c, 1, 1}, x.options().dtype(at::kFloat));
  const uint8_t* xp = x.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t chunks = (c + kChunk - 1) / kChunk;
  const float sx = static_cast<float>(scale), zx = static_cast<float>(zp), count = static_cast<float>(pixels);
  const bool vnni = vnni_cpu();
  auto run = [&](int64_t i0, int64_t i1) {
    int32_t sums[kChunk];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t img = i / chunks, c0 = (i % chunks) * kChunk, width = std::min(kChunk, c - c0);
      const uint8_t* src = xp + img * pixels * c + c0;
#ifdef TS_QX86
      if (vnni) {
        pool_vnni(src, pixels, c, width, sums);
      } else {
        pool_portable(src, pixels, c, width, sums);
      }
#else
      pool_portable(src, pixels, c, width, sums);
#endif
      for (int64_t j = 0; j < width; ++j) yp[img * c + c0 + j] = (static_cast<float>(sums[j]) / count - zx) * sx;
    }
  };
  stream_rows(x.numel(), b * chunks, run);
  return y;
}

// One output row of the max-pool: for each output pixel, the maximum over the window's rows [r0, r1) and the
// columns of its own clipped range, per channel.
void maxpool_row_portable(const uint8_t* x, int64_t w, int64_t c, int64_t r0, int64_t r1, int64_t ow, int64_t kw,
                          int64_t sw, int64_t pw, uint8_t* y) {
  for (int64_t o = 0; o < ow; ++o) {
    const int64_t c0 = std::max<int64_t>(0, o * sw - pw), c1 = std::min<int64_t>(w, o * sw - pw + kw);
    uint8_t* out = y + o * c;
    std::fill(out, out + c, uint8_t{0});
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t q = c0; q < c1; ++q) {
        const uint8_t* src = x + (r * w + q) * c;
        for (int64_t j = 0; j < c; ++j) out[j] = std::max(out[j], src[j]);
      }
    }
  }
}

#ifdef TS_QX86
TS_Q512 void maxpool_row_avx512(const uint8_t* x, int64_t w, int64_t c, int64_t r0, int64_t r1, int64_t ow,
                                int64_t kw, int64_t sw, int64_t pw, uint8_t* y) {
  for (int64_t o = 0; o < ow; ++o) {
    const int64_t c0 = std::max<int64_t>(0, o * sw - pw), c1 = std::min<int64_t>(w, o * sw - pw + kw);
    for (int64_t j = 0; j < c; j += 64) {
      const __mmask64 mask = c - j >= 64 ? ~0ull : ((1ull << (c - j)) - 1ull);
      __m512i acc = _mm512_setzero_si512();
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* src = x + (r * w + c0) * c + j;
        for (int64_t q = c0; q < c1; ++q, src += c) acc = _mm512_max_epu8(acc, _mm512_maskz_loadu_epi8(mask, src));
      }
      _mm512_mask_storeu_epi8(y + o * c + j, mask, acc);
    }
  }
}
#endif

at::Tensor maxpool_cpu(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kByte && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "qmaxpool: x must be channels-last uint8 codes [N, C, H, W]");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, "qmaxpool: kernel, stride, padding: 2 each");
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0, "qmaxpool: kernel and stride must be positive");
  TORCH_CHECK(ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw, "qmaxpool: padding must be at most half the kernel");
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(oh > 0 && ow > 0, "qmaxpool: the window is larger than the padded input");
  at::Tensor y = at::empty({b, c, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const uint8_t* xp = x.data_ptr<uint8_t>();
  uint8_t* yp = y.data_ptr<uint8_t>();
  const bool avx512 = vnni_cpu();
  auto run = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t img = i / oh, row = i % oh;
      const int64_t r0 = std::max<int64_t>(0, row * sh - ph), r1 = std::min<int64_t>(h, row * sh - ph + kh);
      const uint8_t* src = xp + img * h * w * c;
      uint8_t* dst = yp + i * ow * c;
#ifdef TS_QX86
      if (avx512) {
        maxpool_row_avx512(src, w, c, r0, r1, ow, kw, sw, pw, dst);
        continue;
      }
#endif
      maxpool_row_portable(src, w, c, r0, r1, ow, kw, sw, pw, dst);
    }
  };
  stream_rows(x.numel(), b * oh, run);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchslim, CPU, m) {
  m.impl("qavgpool", &avgpool_cpu);
  m.impl("qmaxpool", &maxpool_cpu);
}
