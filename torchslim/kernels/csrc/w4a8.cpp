// W4A8 linear for CPUs: int4 weights (grouped, scale + zero per group) times activations quantized to int8
// per row, for one token (decode) to hundreds (prefill). The layout and the math are described in torchslim/kernels/layout.py;
// the schemas are defined in torchslim/kernels/ops.py, this file registers their CPU implementations.
//
// Per output row n and input row m:  y[m, n] = sx[m] * sum_g ( s[n,g] * dot_g(q[n], a[m]) + (z[n,g] - 8 s[n,g]) * A[m,g] )
// where q are the 4-bit codes 0..15 (weight = (q - 8) * s + z), a the int8 activations, sx their scale and
// A[m,g] the sum of a[m] over group g. The dot products are exact int32 sums.
//
// Three paths, the best the CPU has chosen at run time with __builtin_cpu_supports: AVX-512 VNNI
// (vpdpbusd: unsigned weight bytes times signed activation bytes, four products per 32-bit lane, one lane
// per output row of a 16-row tile), AVX2 (the same sums with vpmaddubsw + vpmaddwd, eight rows per
// register) and a portable C++ loop. All three compute the same integer sums.
//
// Many rows (prefill) reuse each unpacked weight chunk across a pass of up to 8 activation rows (the
// nibble masking is paid once per pass, not once per row), and each thread walks its tiles once per
// block of kRowBlock rows so that the block's int8 activations stay in the core's L2 cache while the
// thread's weight range streams through it (weights re-read rows / kRowBlock times, activations once).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TS_X86 1
#endif

namespace {

constexpr int64_t kTile = 16;   // output rows per tile: one 32-bit lane of a 512-bit register each
constexpr int64_t kHead = 64;   // bytes of (16 bf16 scales, 16 bf16 zeros) before each group's codes
constexpr int64_t kMaxRowsPerPass = 8;  // activation rows sharing one pass over a tile's weights (VNNI)
constexpr int64_t kNarrowRowsPerPass = 4;  // AVX2 and portable: AVX2 has 16 vector registers, not 32
constexpr int64_t kRowBlock = 64;  // activation rows kept hot in L2 while a thread walks its tiles
constexpr int64_t kAvx2Chunks16 = 4;  // AVX2: chunks summed in 16 bits before widening (see tile_avx2)
constexpr int64_t kAvx2Prefetch = 1024;  // bytes ahead of the chunk being read that the AVX2 loop prefetches
#ifndef TS_VNNI_PREFETCH
#define TS_VNNI_PREFETCH 1024  // the same for the VNNI loop (0: none; -D for measurements)
#endif
constexpr int64_t kVnniPrefetch = TS_VNNI_PREFETCH;

// Activations quantized once per call: int8 codes, per-row scale and per-(row, group) sums.
struct QuantizedRows {
  std::vector<int8_t> codes;  // [M, K]
  std::vector<float> scale;   // [M]
  std::vector<float> sums;    // [M, G], exact integers held as float
};

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The activations are read in their own dtype (float32 or bfloat16): a bf16 value widens to float32
// exactly, so quantizing bf16 rows here equals quantizing them after a .float(), without that copy.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// Round half to even, as torch.round and _mm512_cvtps_epi32 under the default rounding mode.
template <typename T>
void quantize_rows_portable(const T* x, int64_t m_begin, int64_t m_end, int64_t k, int64_t g, QuantizedRows& q) {
  const int64_t groups = k / g;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const T* row = x + m * k;
    float amax = 0.f;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(to_float(row[i])));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    q.scale[m] = amax / 127.f;
    int8_t* out = q.codes.data() + m * k;
    for (int64_t gi = 0; gi < groups; ++gi) {
      int32_t sum = 0;
      for (int64_t i = gi * g; i < (gi + 1) * g; ++i) {
        float v = std::nearbyint(to_float(row[i]) * inv);
        v = std::min(127.f, std::max(-127.f, v));
        out[i] = static_cast<int8_t>(v);
        sum += out[i];
      }
      q.sums[m * groups + gi] = static_cast<float>(sum);
    }
  }
}

// One 16-row tile, rows [0, mb) of the activations: the portable reference of tile_vnni.
void tile_portable(const uint8_t* blk, int64_t groups, int64_t g, const QuantizedRows& q, int64_t m0, int64_t mb,
                   int64_t k, float* out /* [mb, 16] */) {
  float acc[kMaxRowsPerPass][kTile] = {};
  for (int64_t gi = 0; gi < groups; ++gi) {
    const uint16_t* head = reinterpret_cast<const uint16_t*>(blk);
    const uint8_t* w = blk + kHead;
    int32_t dot[kMaxRowsPerPass][kTile] = {};
    for (int64_t c = 0; c < g / 8; ++c) {
      const uint8_t* chunk = w + c * 64;
      for (int64_t m = 0; m < mb; ++m) {
        const int8_t* a = q.codes.data() + (m0 + m) * k + gi * g + c * 8;
        for (int64_t r = 0; r < kTile; ++r) {
          int32_t s = 0;
          for (int64_t i = 0; i < 4; ++i) {
            const uint8_t byte = chunk[r * 4 + i];
            s += static_cast<int32_t>(byte & 0x0F) * a[i] + static_cast<int32_t>(byte >> 4) * a[4 + i];
          }
          dot[m][r] += s;
        }
      }
    }
    for (int64_t r = 0; r < kTile; ++r) {
      const float sc = bf16_to_float(head[r]);
      const float off = bf16_to_float(head[kTile + r]) - 8.f * sc;
      for (int64_t m = 0; m < mb; ++m) {
        acc[m][r] += sc * static_cast<float>(dot[m][r]) + off * q.sums[(m0 + m) * groups + gi];
      }
    }
    blk += kHead + 8 * g;
  }
  for (int64_t m = 0; m < mb; ++m)
    for (int64_t r = 0; r < kTile; ++r) out[m * kTile + r] = acc[m][r] * q.scale[m0 + m];
}

#ifdef TS_X86
#define TS_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

TS_VNNI inline __m512 load_f32x16(const float* p) { return _mm512_loadu_ps(p); }
TS_VNNI inline __m512 load_f32x16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <typename T>
TS_VNNI void quantize_rows_vnni(const T* x, int64_t m_begin, int64_t m_end, int64_t k, int64_t g, QuantizedRows& q) {
  const int64_t groups = k / g;  // g is a multiple of 16 (32, 64, 128, ...)
  for (int64_t m = m_begin; m < m_end; ++m) {
    const T* row = x + m * k;
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load_f32x16(row + i)));
    const float amax = _mm512_reduce_max_ps(vmax);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    q.scale[m] = amax / 127.f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    int8_t* out = q.codes.data() + m * k;
    for (int64_t gi = 0; gi < groups; ++gi) {
      __m512i vsum = _mm512_setzero_si512();
      for (int64_t i = gi * g; i < (gi + 1) * g; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load_f32x16(row + i), vinv));
        v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
        vsum = _mm512_add_epi32(vsum, v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(v));
      }
      q.sums[m * groups + gi] = static_cast<float>(_mm512_reduce_add_epi32(vsum));
    }
  }
}

TS_VNNI inline __m512 load_bf16x16(const uint8_t* p) { return load_f32x16(reinterpret_cast<const c10::BFloat16*>(p)); }

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// One 16-row tile against MB activation rows. Each 64-byte chunk holds 16 rows x 8 columns: low nibbles
// columns 0..3, high nibbles columns 4..7 of the chunk, byte 4r+i for row r. Two chunks per step make four
// vpdpbusd per row, spread over kChains accumulators per row so that MB * kChains independent chains
// hide vpdpbusd's latency (four for one row, one each from six rows on: 32 registers hold 8 rows). The
// int32 sums are exact, so how they are split over chains does not change the result. Each thread reads
// one contiguous range; a software prefetch kVnniPrefetch bytes ahead keeps more cache-line fills in
// flight than the hardware prefetcher alone, which matters when the weights lie in huge pages
// (torchslim/kernels/hugepages.py: the stream then runs at the core's fill rate, not the page walks').
// The llama-decode rows of BENCHMARKS.md run with it.
template <int MB>
TS_VNNI void tile_vnni(const uint8_t* blk, int64_t groups, int64_t g, const QuantizedRows& q, int64_t m0, int64_t k,
                       float* out /* [MB, 16] */) {
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m512 eight = _mm512_set1_ps(8.f);
  constexpr int kChains = MB >= 6 ? 1 : (MB >= 3 ? 2 : 4);
  __m512 acc[MB];
  const int8_t* a[MB];
  for (int m = 0; m < MB; ++m) {
    acc[m] = _mm512_setzero_ps();
    a[m] = q.codes.data() + (m0 + m) * k;
  }
  const int64_t step = kHead + 8 * g;
  for (int64_t gi = 0; gi < groups; ++gi, blk += step) {
    const uint8_t* w = blk + kHead;
    __m512i d[MB][kChains];
    for (int m = 0; m < MB; ++m)
      for (int j = 0; j < kChains; ++j) d[m][j] = _mm512_setzero_si512();
    const int64_t base = gi * g;
    for (int64_t c = 0; c < g / 8; c += 2) {
      if constexpr (kVnniPrefetch > 0) {
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kVnniPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + 64 + kVnniPrefetch), _MM_HINT_T0);
      }
      const __m512i w0 = _mm512_loadu_si512(w + c * 64);
      const __m512i w1 = _mm512_loadu_si512(w + c * 64 + 64);
      const __m512i nib[4] = {_mm512_and_si512(w0, mask), _mm512_and_si512(_mm512_srli_epi16(w0, 4), mask),
                              _mm512_and_si512(w1, mask), _mm512_and_si512(_mm512_srli_epi16(w1, 4), mask)};
      // Columns 8c..8c+15: nib[j] pairs with activation bytes 4j..4j+3. Rows innermost, so that
      // consecutive vpdpbusd write different accumulators.
      for (int j = 0; j < 4; ++j)
        for (int m = 0; m < MB; ++m)
          d[m][j % kChains] =
              _mm512_dpbusd_epi32(d[m][j % kChains], nib[j], _mm512_set1_epi32(load_i32(a[m] + base + c * 8 + 4 * j)));
    }
    const __m512 sc = load_bf16x16(blk);
    const __m512 off = _mm512_fnmadd_ps(eight, sc, load_bf16x16(blk + 32));  // z - 8 s
    for (int m = 0; m < MB; ++m) {
      __m512i dm = d[m][0];
      for (int j = 1; j < kChains; ++j) dm = _mm512_add_epi32(dm, d[m][j]);
      const __m512 sums = _mm512_set1_ps(q.sums[(m0 + m) * groups + gi]);
      acc[m] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(dm), _mm512_fmadd_ps(off, sums, acc[m]));
    }
  }
  for (int m = 0; m < MB; ++m) _mm512_storeu_ps(out + m * kTile, _mm512_mul_ps(acc[m], _mm512_set1_ps(q.scale[m0 + m])));
}

#define TS_AVX2 __attribute__((target("avx2,fma")))

TS_AVX2 inline __m256 load_bf16x8(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// tile_vnni without VNNI: a 256-bit half of each chunk holds 8 rows; vpmaddubsw multiplies weight and
// activation bytes into 16-bit pair sums (at most 2 * 15 * 127 per nibble half, no saturation), the two
// nibble halves are added in 16 bits. Those 16-bit sums (at most 2 * 2 * 15 * 127 = 7620 per lane and
// chunk) are accumulated over up to kAvx2Chunks16 chunks (at most 30480, no overflow) before one vpmaddwd
// with ones widens them to 32 bits: one vpmaddwd per row and half per kAvx2Chunks16 chunks instead of per
// chunk, which leaves the multiply port to vpmaddubsw when several rows share a pass (prefill). The int32
// sums are the same.
// Unlike the VNNI loop, this one prefetches kAvx2Prefetch bytes ahead (one 128-column group's chunks):
// on the AVX2 CPU it was measured on (AMD Zen 2), the hardware prefetcher alone left a decode-shaped call
// (one row, weights streamed from DRAM) well short of the read bandwidth, and the prefetch closed most
// of that gap. A prefetch past the end of the weight is harmless (no fault, the line is not used).
template <int MB>
TS_AVX2 void tile_avx2(const uint8_t* blk, int64_t groups, int64_t g, const QuantizedRows& q, int64_t m0, int64_t k,
                       float* out /* [MB, 16] */) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256 eight = _mm256_set1_ps(8.f);
  __m256 acc[MB][2];
  const int8_t* a[MB];
  for (int m = 0; m < MB; ++m) {
    acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    a[m] = q.codes.data() + (m0 + m) * k;
  }
  const int64_t step = kHead + 8 * g;
  for (int64_t gi = 0; gi < groups; ++gi, blk += step) {
    const uint8_t* w = blk + kHead;
    __m256i d[MB][2];
    for (int m = 0; m < MB; ++m) d[m][0] = d[m][1] = _mm256_setzero_si256();
    const int64_t base = gi * g, chunks = g / 8;
    for (int64_t c0 = 0; c0 < chunks; c0 += kAvx2Chunks16) {
      const int64_t c1 = std::min(chunks, c0 + kAvx2Chunks16);
      __m256i p[MB][2];  // 16-bit sums over chunks c0..c1
      for (int m = 0; m < MB; ++m) p[m][0] = p[m][1] = _mm256_setzero_si256();
      for (int64_t c = c0; c < c1; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kAvx2Prefetch), _MM_HINT_T0);
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * 64));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * 64 + 32));
        const __m256i l0 = _mm256_and_si256(w0, mask), h0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), mask);
        const __m256i l1 = _mm256_and_si256(w1, mask), h1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), mask);
        for (int m = 0; m < MB; ++m) {
          const int8_t* ap = a[m] + base + c * 8;
          const __m256i alo = _mm256_set1_epi32(load_i32(ap)), ahi = _mm256_set1_epi32(load_i32(ap + 4));
          p[m][0] = _mm256_add_epi16(p[m][0], _mm256_add_epi16(_mm256_maddubs_epi16(l0, alo), _mm256_maddubs_epi16(h0, ahi)));
          p[m][1] = _mm256_add_epi16(p[m][1], _mm256_add_epi16(_mm256_maddubs_epi16(l1, alo), _mm256_maddubs_epi16(h1, ahi)));
        }
      }
      for (int m = 0; m < MB; ++m) {
        d[m][0] = _mm256_add_epi32(d[m][0], _mm256_madd_epi16(p[m][0], ones));
        d[m][1] = _mm256_add_epi32(d[m][1], _mm256_madd_epi16(p[m][1], ones));
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 sc = load_bf16x8(blk + 16 * h);
      const __m256 off = _mm256_fnmadd_ps(eight, sc, load_bf16x8(blk + 32 + 16 * h));  // z - 8 s
      for (int m = 0; m < MB; ++m) {
        const __m256 sums = _mm256_set1_ps(q.sums[(m0 + m) * groups + gi]);
        acc[m][h] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(d[m][h]), _mm256_fmadd_ps(off, sums, acc[m][h]));
      }
    }
  }
  for (int m = 0; m < MB; ++m) {
    const __m256 s = _mm256_set1_ps(q.scale[m0 + m]);
    _mm256_storeu_ps(out + m * kTile, _mm256_mul_ps(acc[m][0], s));
    _mm256_storeu_ps(out + m * kTile + 8, _mm256_mul_ps(acc[m][1], s));
  }
}
#endif

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2 };

Isa best_isa() {
  static const Isa best = [] {
#ifdef TS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
      return Isa::kAvx512Vnni;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
    return Isa::kPortable;
  }();
  return best;
}

Isa parse_isa(const std::string& name) {
  Isa isa;
  if (name == "avx512-vnni") {
    isa = Isa::kAvx512Vnni;
  } else if (name == "avx2") {
    isa = Isa::kAvx2;
  } else if (name == "portable") {
    isa = Isa::kPortable;
  } else {
    TORCH_CHECK(false, "w4a8_linear_on: unknown isa '", name, "' (avx512-vnni, avx2 or portable)");
  }
  TORCH_CHECK(static_cast<int>(isa) <= static_cast<int>(best_isa()), "w4a8_linear_on: this CPU lacks ", name);
  return isa;
}

// One tile against rows [m0, m0 + mb) (mb at most the path's pass size) on the chosen path.
void run_tile([[maybe_unused]] Isa isa, const uint8_t* blk, int64_t groups, int64_t g, const QuantizedRows& q, int64_t m0, int64_t mb,
              int64_t k, float* out) {
#ifdef TS_X86
  if (isa == Isa::kAvx512Vnni) {
    switch (mb) {
      case 1: return tile_vnni<1>(blk, groups, g, q, m0, k, out);
      case 2: return tile_vnni<2>(blk, groups, g, q, m0, k, out);
      case 3: return tile_vnni<3>(blk, groups, g, q, m0, k, out);
      case 4: return tile_vnni<4>(blk, groups, g, q, m0, k, out);
      case 5: return tile_vnni<5>(blk, groups, g, q, m0, k, out);
      case 6: return tile_vnni<6>(blk, groups, g, q, m0, k, out);
      case 7: return tile_vnni<7>(blk, groups, g, q, m0, k, out);
      default: return tile_vnni<8>(blk, groups, g, q, m0, k, out);
    }
  }
  if (isa == Isa::kAvx2) {
    switch (mb) {
      case 1: return tile_avx2<1>(blk, groups, g, q, m0, k, out);
      case 2: return tile_avx2<2>(blk, groups, g, q, m0, k, out);
      case 3: return tile_avx2<3>(blk, groups, g, q, m0, k, out);
      default: return tile_avx2<4>(blk, groups, g, q, m0, k, out);
    }
  }
#endif
  tile_portable(blk, groups, g, q, m0, mb, k, out);
}

template <typename T>
void quantize_rows([[maybe_unused]] Isa isa, const T* x, int64_t r0, int64_t r1, int64_t k, int64_t g, QuantizedRows& q) {
#ifdef TS_X86
  if (isa == Isa::kAvx512Vnni) return quantize_rows_vnni(x, r0, r1, k, g, q);
#endif
  quantize_rows_portable(x, r0, r1, k, g, q);
}

// One output row of a tile: plus the bias in float32, then rounded once (to nearest even) to T.
template <typename T>
void store_row(const float* src, const float* bias, int64_t valid, T* dst) {
  for (int64_t r = 0; r < valid; ++r) dst[r] = static_cast<T>(bias ? src[r] + bias[r] : src[r]);
}

at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& packed, int64_t out_features, int64_t group_size,
                       const std::optional<at::Tensor>& bias, [[maybe_unused]] Isa isa) {  // unused without x86
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous(),
              "w4a8_linear: packed must be a contiguous uint8 [tiles, groups, 64 + 8 * group_size] tensor");
  TORCH_CHECK(group_size >= 16 && group_size % 16 == 0, "w4a8_linear: group_size must be a multiple of 16");
  TORCH_CHECK(packed.size(2) == kHead + 8 * group_size, "w4a8_linear: packed's last dimension ", packed.size(2),
              " does not match group_size ", group_size);
  const int64_t tiles = packed.size(0), groups = packed.size(1), k = groups * group_size;
  TORCH_CHECK(out_features > 0 && (out_features + kTile - 1) / kTile == tiles, "w4a8_linear: out_features ",
              out_features, " does not match ", tiles, " packed tiles of ", kTile, " rows");
  TORCH_CHECK(x.size(-1) == k, "w4a8_linear: input has ", x.size(-1), " features, the weight ", k);
  TORCH_CHECK(x.is_floating_point(), "w4a8_linear: input must be floating point");

  // float32 and bfloat16 inputs are read and written in place of a float32 copy (decode calls this once per
  // layer per token, where two extra copies cost as much as a small layer); other dtypes go through float32.
  const bool native = x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
  const at::Tensor xc = native ? x.reshape({-1, k}).contiguous() : x.reshape({-1, k}).to(at::kFloat).contiguous();
  const bool bf16 = xc.scalar_type() == at::kBFloat16;
  const int64_t rows = xc.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  if (rows == 0) return at::zeros(shape, x.options());

  // Reused across calls (decode calls this once per layer per token). Worker threads must read the
  // calling thread's buffers, so they get it through a plain reference, never by the thread_local name.
  thread_local QuantizedRows rows_buffers;
  QuantizedRows& q = rows_buffers;
  q.codes.resize(rows * k);
  q.scale.resize(rows);
  q.sums.resize(rows * groups);
  // Rows are quantized independently; a grain of 16 rows keeps decode (1..16 rows) on the calling thread.
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    if (bf16) {
      quantize_rows(isa, xc.data_ptr<c10::BFloat16>(), r0, r1, k, group_size, q);
    } else {
      quantize_rows(isa, xc.data_ptr<float>(), r0, r1, k, group_size, q);
    }
  });

  // The bias is added in float32 before the one rounding to the output dtype, as y.add_(bias).to(dtype).
  const at::Tensor bias_f =
      bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({rows, out_features}, xc.options());
  void* yp = y.data_ptr();
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const int64_t tile_bytes = groups * (kHead + 8 * group_size);
  const int64_t pass = isa == Isa::kAvx512Vnni ? kMaxRowsPerPass : kNarrowRowsPerPass;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    float buf[kMaxRowsPerPass * kTile];
    for (int64_t b0 = 0; b0 < rows; b0 += kRowBlock) {
      const int64_t b1 = std::min(rows, b0 + kRowBlock);
      for (int64_t t = t0; t < t1; ++t) {
        const uint8_t* blk = wp + t * tile_bytes;
        const int64_t n0 = t * kTile, valid = std::min(kTile, out_features - n0);
        for (int64_t m0 = b0; m0 < b1; m0 += pass) {
          const int64_t mb = std::min(pass, b1 - m0);
          run_tile(isa, blk, groups, group_size, q, m0, mb, k, buf);
          for (int64_t m = 0; m < mb; ++m) {
            const float* src = buf + m * kTile;
            const int64_t at = (m0 + m) * out_features + n0;
            if (bf16) {
              store_row(src, bp ? bp + n0 : nullptr, valid, static_cast<c10::BFloat16*>(yp) + at);
            } else {
              store_row(src, bp ? bp + n0 : nullptr, valid, static_cast<float*>(yp) + at);
            }
          }
        }
      }
    }
  });
  return native ? y.reshape(shape) : y.to(x.scalar_type()).reshape(shape);
}

at::Tensor w4a8_linear_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t out_features, int64_t group_size,
                           const std::optional<at::Tensor>& bias) {
  return linear_impl(x, packed, out_features, group_size, bias, best_isa());
}

at::Tensor w4a8_linear_on_cpu(const at::Tensor& x, const at::Tensor& packed, int64_t out_features, int64_t group_size,
                              const std::optional<at::Tensor>& bias, c10::string_view isa) {
  return linear_impl(x, packed, out_features, group_size, bias, parse_isa(std::string(isa)));
}

}  // namespace

// The path w4a8_linear takes on this CPU: 2 AVX-512 VNNI, 1 AVX2, 0 portable (read through ctypes).
extern "C" int torchslim_w4a8_isa() { return static_cast<int>(best_isa()); }

TORCH_LIBRARY_IMPL(torchslim, CPU, m) {
  m.impl("w4a8_linear", &w4a8_linear_cpu);
  m.impl("w4a8_linear_on", &w4a8_linear_on_cpu);
}
