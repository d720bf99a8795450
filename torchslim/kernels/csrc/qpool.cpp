// Global average pooling of uint8 codes (the squeeze of a squeeze-and-excitation block, Hu et al. 2018,
// arXiv:1709.01507, and a classifier head's pool) to float32 values, reading the codes once as bytes:
//   y[b, c] = (sum_p x[b, p, c] / P − zx) · sx          (P pixels; the sum exact in int32)
// torch's mean over a uint8 map with dtype=float32 first writes the whole map as float32 (four times the bytes)
// and reduces it afterwards. The schema is defined in torchslim/kernels/ops.py.

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

}  // namespace

TORCH_LIBRARY_IMPL(torchslim, CPU, m) { m.impl("qavgpool", &avgpool_cpu); }
