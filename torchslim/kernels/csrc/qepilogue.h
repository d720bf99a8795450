// The epilogue of torchslim's static int8 convolution kernels (qconv.cpp), apart from their loops, and the
// quantization of float inputs to codes. Per output channel n of pixel m: v = acc · scale[n] + bias[n]
// (+ a residual operand's codes), then the activation, then uint8 codes clamp(round_half_even(v / so) + zo,
// 0, 255) or float32. The scalar form serves the portable loops, store16n the AVX-512 ones; both compute the
// same values.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#define TS_QX86 1
#endif
#if defined(__linux__) && defined(TS_QX86)
#include <sys/syscall.h>
#include <unistd.h>
#define TS_QAMX 1
#endif

namespace {

// Byte-streaming passes (im2col, pools) over fewer bytes than this run on the calling thread: waking a second
// one costs more than it saves.
constexpr int64_t kSerialBytes = 1 << 18;

// Rows [0, n) of a byte-streaming pass over `bytes` bytes through f(r0, r1): on the calling thread below
// kSerialBytes, else split over the threads a row at a time.
template <typename F>
void stream_rows(int64_t bytes, int64_t n, const F& f) {
  if (bytes < kSerialBytes) {
    f(0, n);
  } else {
    at::parallel_for(0, n, 1, f);
  }
}

enum class Act : int { kNone = 0, kRelu = 1, kHardswish = 2, kSwish = 3 };

Act parse_act(c10::string_view name) {
  const std::string s(name);
  if (s.empty() || s == "none") return Act::kNone;
  if (s == "relu") return Act::kRelu;
  if (s == "hardswish") return Act::kHardswish;
  if (s == "swish") return Act::kSwish;
  TORCH_CHECK(false, "torchslim qconv: unknown activation '", s, "' (none, relu, hardswish, swish)");
}

bool vnni_cpu() {
#ifdef TS_QX86
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }();
  return ok;
#else
  return false;
#endif
}

// The epilogue's constants, shared by the two paths.
struct Epilogue {
  const float* scale;  // [N]
  const float* bias;   // [N]
  Act act;
  bool out_u8;
  float inv_out;  // 1 / so
  float out_zp;
  const uint8_t* accum;  // [M, N] codes or nullptr
  float accum_scale, accum_zp;
};

inline float act_scalar(Act act, float v) {
  switch (act) {
    case Act::kRelu:
      return v > 0.f ? v : 0.f;
    case Act::kHardswish:
      return v * std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f;
    case Act::kSwish:
      return v / (1.f + std::exp(-v));
    default:
      return v;
  }
}

// One output value from its exact sum; y points at the output row (uint8 or float), n is the channel.
inline void store_scalar(const Epilogue& e, float acc, int64_t m, int64_t n, int64_t ldn, void* y) {
  float v = acc * e.scale[n] + e.bias[n];
  if (e.accum) v += (static_cast<float>(e.accum[m * ldn + n]) - e.accum_zp) * e.accum_scale;
  v = act_scalar(e.act, v);
  if (e.out_u8) {
    const float q = std::nearbyint(v * e.inv_out) + e.out_zp;
    static_cast<uint8_t*>(y)[m * ldn + n] = static_cast<uint8_t>(std::min(std::max(q, 0.f), 255.f));
  } else {
    static_cast<float*>(y)[m * ldn + n] = v;
  }
}

// AVX-512 VNNI and VBMI (vpermb): the depthwise loop and the few-channel im2col.
bool vbmi_cpu() {
#ifdef TS_QX86
  static const bool ok = [] {
    __builtin_cpu_init();
    return vnni_cpu() && __builtin_cpu_supports("avx512vbmi");
  }();
  return ok;
#else
  return false;
#endif
}

#ifdef TS_QX86
#define TS_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TS_QVBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

// swish(v) = v · sigmoid(v) = v / (1 + 2^t) with t = −v · log2(e) (SiLU: Elfwing et al. 2018, arXiv:1702.03118;
// Ramachandran et al. 2017, arXiv:1710.05941), for N vectors side by side: 2^t = 2^i · 2^f with i = round(t)
// and f = t − i in [−½, ½], 2^f by a degree-4 polynomial fitted to its relative error on that interval (at most
// 3e-6, with p(0) = 1; swish's own relative error is no larger), 2^i applied by vscalefps. The epilogue is bound
// by issuing its floating-point instructions, so this form takes 11 of them where a clamped e^x by a degree-6
// Taylor polynomial took 16, and each stage runs across the N vectors so that independent work sits side by
// side while one chain waits on latency. t is kept at −125 and above, where 2^t stays a normal float (a
// subnormal costs a microcode assist of a hundred cycles and more on x86) and 1 + 2^t rounds to 1 as it does
// from t = −25 on; a large t makes 2^t infinite and the quotient −0, swish's limit.
template <int N>
TS_Q512 inline void swish_n(__m512* v) {
  __m512 t[N], i[N], p[N];
  for (int u = 0; u < N; ++u)
    t[u] = _mm512_max_ps(_mm512_mul_ps(v[u], _mm512_set1_ps(-1.44269504088896341f)), _mm512_set1_ps(-125.f));
  for (int u = 0; u < N; ++u) i[u] = _mm512_roundscale_ps(t[u], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  for (int u = 0; u < N; ++u) t[u] = _mm512_sub_ps(t[u], i[u]);
  for (int u = 0; u < N; ++u)
    p[u] = _mm512_fmadd_ps(_mm512_set1_ps(9.582852944731712e-3f), t[u], _mm512_set1_ps(5.5906426161527634e-2f));
  for (int u = 0; u < N; ++u) p[u] = _mm512_fmadd_ps(p[u], t[u], _mm512_set1_ps(2.4024099111557007e-1f));
  for (int u = 0; u < N; ++u) p[u] = _mm512_fmadd_ps(p[u], t[u], _mm512_set1_ps(6.931241750717163e-1f));
  for (int u = 0; u < N; ++u) p[u] = _mm512_fmadd_ps(p[u], t[u], _mm512_set1_ps(1.f));
  for (int u = 0; u < N; ++u)
    v[u] = _mm512_div_ps(v[u], _mm512_add_ps(_mm512_set1_ps(1.f), _mm512_scalef_ps(p[u], i[u])));
}

// uint8 codes clamp(round_half_even(v · inv) + zp, 0, 255) of 16 floats: vcvtps2dq rounds half to even (the
// default MXCSR mode), then the zero point and unsigned saturation.
TS_Q512 inline __m128i to_codes(__m512 v, __m512 inv, __m512i zp) {
  const __m512 t = _mm512_min_ps(_mm512_mul_ps(v, inv), _mm512_set1_ps(1e9f));
  return _mm512_cvtusepi32_epi8(_mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(t), zp), _mm512_setzero_si512()));
}

// The epilogue's per-call constants, broadcast once: locals the compiler keeps in registers (the output
// stores go through uint8_t pointers, which may alias anything, so fields read through a reference would be
// loaded again after every store).
struct EpiVec {
  __m512 inv, azp, ascale;
  __m512i zp;
  const uint8_t* accum;
  bool out_u8;
};

TS_Q512 inline EpiVec epi_vec(const Epilogue& e) {
  return EpiVec{_mm512_set1_ps(e.inv_out), _mm512_set1_ps(e.accum_zp), _mm512_set1_ps(e.accum_scale),
                _mm512_set1_epi32(static_cast<int32_t>(e.out_zp)), e.accum, e.out_u8};
}

// The epilogue for 16 channels [n, n + 16) of N consecutive output pixels m, m + 1, … (acc[u]: pixel m + u's
// sums as floats; mask: the valid channels; sc, bi: their scale and bias), each stage across the N pixels; the
// activation is a template parameter, so the loops around it carry no switch.
template <Act A, int N>
TS_Q512 inline void store16n(const EpiVec& c, const __m512* acc, __m512 sc, __m512 bi, int64_t m, int64_t n,
                             int64_t ldn, __mmask16 mask, void* y) {
  __m512 v[N];
  for (int u = 0; u < N; ++u) v[u] = _mm512_fmadd_ps(acc[u], sc, bi);
  if (c.accum) {
    for (int u = 0; u < N; ++u) {
      const __m128i codes = _mm_maskz_loadu_epi8(mask, c.accum + (m + u) * ldn + n);
      v[u] = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes)), c.azp), c.ascale, v[u]);
    }
  }
  if constexpr (A == Act::kRelu) {
    for (int u = 0; u < N; ++u) v[u] = _mm512_max_ps(v[u], _mm512_setzero_ps());
  } else if constexpr (A == Act::kHardswish) {  // v · relu6(v + 3) / 6, the division as a product with 1/6
    for (int u = 0; u < N; ++u) {
      const __m512 g = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v[u], _mm512_set1_ps(3.f)), _mm512_setzero_ps()),
                                     _mm512_set1_ps(6.f));
      v[u] = _mm512_mul_ps(_mm512_mul_ps(v[u], g), _mm512_set1_ps(1.f / 6.f));
    }
  } else if constexpr (A == Act::kSwish) {
    swish_n<N>(v);
  }
  for (int u = 0; u < N; ++u) {
    if (c.out_u8) {
      _mm_mask_storeu_epi8(static_cast<uint8_t*>(y) + (m + u) * ldn + n, mask, to_codes(v[u], c.inv, c.zp));
    } else {
      _mm512_mask_storeu_ps(static_cast<float*>(y) + (m + u) * ldn + n, mask, v[u]);
    }
  }
}

// store16n over `rows` consecutive pixels, 4 at a time.
template <Act A>
TS_Q512 inline void store16_rows(const EpiVec& c, const __m512* acc, int64_t rows, __m512 sc, __m512 bi, int64_t m,
                                 int64_t n, int64_t ldn, __mmask16 mask, void* y) {
  int64_t u = 0;
  for (; u + 4 <= rows; u += 4) store16n<A, 4>(c, acc + u, sc, bi, m + u, n, ldn, mask, y);
  for (; u < rows; ++u) store16n<A, 1>(c, acc + u, sc, bi, m + u, n, ldn, mask, y);
}

inline __mmask16 tail_mask(int64_t valid) { return valid >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << valid) - 1u); }

TS_Q512 int64_t quantize_vnni(const float* src, uint8_t* dst, int64_t count, float inv, int32_t zp) {
  const __m512 iv = _mm512_set1_ps(inv);
  const __m512i z = _mm512_set1_epi32(zp);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), to_codes(_mm512_loadu_ps(src + i), iv, z));
  return i;  // the tail is left to the scalar loop
}

#endif

Epilogue make_epilogue(const at::Tensor& scale, const at::Tensor& bias, c10::string_view act, double out_scale,
                       int64_t out_zp, bool out_u8) {
  Epilogue e{};
  e.scale = scale.data_ptr<float>();
  e.bias = bias.data_ptr<float>();
  e.act = parse_act(act);
  e.out_u8 = out_u8;
  e.inv_out = static_cast<float>(1.0 / out_scale);
  e.out_zp = static_cast<float>(out_zp);
  return e;
}

void check_vec(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, "torchslim qconv: ", what,
              " must be a contiguous float32 vector of ", n, " values");
}

// float32 activations to uint8 codes clamp(round_half_even(v / s) + zx, 0, 255) (as v · (1 / s), like
// torch.quantize_per_tensor), elementwise in memory order: q has x's channels-last strides.
at::Tensor quantize_input(const at::Tensor& x, double x_scale, int64_t x_zp, bool vnni) {
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte).memory_format(at::MemoryFormat::ChannelsLast));
  const float* src = x.data_ptr<float>();
  uint8_t* dst = q.data_ptr<uint8_t>();
  const int64_t count = x.numel();
  const float inv = static_cast<float>(1.0 / x_scale), zp = static_cast<float>(x_zp);
  int64_t i = 0;
#ifdef TS_QX86
  if (vnni) i = quantize_vnni(src, dst, count, inv, static_cast<int32_t>(x_zp));
#endif
  for (; i < count; ++i) dst[i] = static_cast<uint8_t>(std::min(std::max(std::nearbyint(src[i] * inv) + zp, 0.f), 255.f));
  return q;
}

}  // namespace
