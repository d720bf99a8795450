// The static int8 1×1 convolution for CPUs on channels-last (NHWC) uint8 activations: an int8 GEMM over the
// pixels, without oneDNN's per-call setup (at batch 1 it costs more than the arithmetic of MobileNet /
// EfficientNet 1×1 layers), on the calling thread when the work is small, with oneDNN's fused epilogue. The
// schema is defined in torchslim/kernels/ops.py, the layout in torchslim/kernels/qconv.py.
//
// Per output pixel m and channel n (x: uint8 codes with zero point zx, w: int8):
//   acc = sum_k x[m, k] * w[n, k] - zx * wsum[n]                 exact int32 (wsum[n] = sum_k w[n, k])
//   v   = acc * scale[n] + bias[n]            (scale = input scale × the channel's weight scale)
//   v  += (a[m, n] - za) * sa                 (optional: a residual operand's uint8 codes)
//   v   = act(v)                              (none, relu, hardswish, swish)
//   out = clamp(round_half_even(v / so) + zo, 0, 255) as uint8, or v as float32
// Weights are packed for AVX-512 VNNI (vpdpbusd: four uint8 × int8 products per int32 lane): for each block
// of 16 output channels and each quad of 4 input channels, 64 bytes [16 channels][4 inputs], the quads
// zero-padded to a multiple of 16 (the inputs to a multiple of 64). Sixteen consecutive quads of a block are
// also an AMX tile operand as it stands (16 rows of [16 channels][4 inputs], the "VNNI layout" tdpbusd reads).
// Three paths, chosen at run time: AMX (tile dot products, 32 pixels × 32 channels per step) where the CPU
// and the kernel grant it and the call has at least 16 pixels; AVX-512 (F, BW, VL, VNNI); a portable C++
// loop. All three compute the same exact sums.

#include "qepilogue.h"

namespace {

// AMX: CPUID leaf 7 reports AMX-TILE (EDX bit 24) and AMX-INT8 (bit 25); Linux then hands the tile
// registers to a process only after arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (kernel 5.16+).
bool amx_cpu() {
#ifdef TS_QAMX
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!vnni_cpu() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 24) & 1u) || !((d >> 25) & 1u)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

enum class Isa { kPortable, kVnni, kAmx };

Isa pick_isa(c10::string_view isa) {
  const std::string s(isa);
  if (s == "portable") return Isa::kPortable;
  TORCH_CHECK(s == "auto" || s == "avx512-vnni" || s == "amx", "torchslim qconv: unknown isa '", s,
              "' (auto, amx, avx512-vnni, portable)");
  TORCH_CHECK(s != "avx512-vnni" || vnni_cpu(), "torchslim qconv: this CPU lacks avx512-vnni");
  TORCH_CHECK(s != "amx" || amx_cpu(), "torchslim qconv: this CPU (or kernel) grants no AMX-INT8 tiles");
  if (s == "avx512-vnni") return Isa::kVnni;
  if (amx_cpu()) return Isa::kAmx;
  return vnni_cpu() ? Isa::kVnni : Isa::kPortable;
}

// Quads of 4 inputs per block of 16 channels in the packed weight: ⌈k / 4⌉ rounded up to 16 (one AMX tile).
inline int64_t padded_quads(int64_t k) { return (k + 63) / 64 * 16; }

// ---- portable paths ----

void conv1x1_portable(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t m0, int64_t m1, int64_t k,
                      int64_t n, int32_t zx, const Epilogue& e, void* y) {
  const int64_t quads = padded_quads(k);
  for (int64_t m = m0; m < m1; ++m) {
    const uint8_t* xr = x + m * k;
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* wb = packed + (j / 16) * quads * 64 + (j % 16) * 4;
      int32_t acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(xr[i]) * wb[(i / 4) * 64 + (i % 4)];
      store_scalar(e, static_cast<float>(acc - zx * wsum[j]), m, j, n, y);
    }
  }
}

#ifdef TS_QX86
// Four input channels of row xr starting at i as one int32 (bytes past k read as zero).
inline int32_t quad_at(const uint8_t* xr, int64_t i, int64_t k) {
  int32_t q = 0;
  if (i + 4 <= k) {
    std::memcpy(&q, xr + i, 4);
  } else {
    std::memcpy(&q, xr + i, static_cast<size_t>(k - i));
  }
  return q;
}

// Rows [m0, m0 + MR) × channel blocks [b0, b0 + NB): MR·NB int32 accumulators, one vpdpbusd per pair and quad.
template <int MR, int NB, Act A>
TS_Q512 void tile1x1(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t m0, int64_t b0, int64_t k,
                     int64_t n, int32_t zx, const Epilogue& e, const EpiVec& c, void* y) {
  const int64_t quads = (k + 3) / 4, stride = padded_quads(k);
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
  const int64_t full = k / 4;
  const uint8_t* xr[MR];
  for (int r = 0; r < MR; ++r) xr[r] = x + (m0 + r) * k;
  for (int64_t q = 0; q < quads; ++q) {
    __m512i w[NB];
    for (int b = 0; b < NB; ++b)
      w[b] = _mm512_loadu_si512(packed + ((b0 + b) * stride + q) * 64);
    for (int r = 0; r < MR; ++r) {
      // A broadcast from memory (a load-port uop) rather than through a general register (a shuffle-port uop
      // that would compete with vpdpbusd).
      const __m512i xv = q < full ? _mm512_broadcastd_epi32(_mm_loadu_si32(xr[r] + 4 * q))
                                  : _mm512_set1_epi32(quad_at(xr[r], 4 * q, k));
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], xv, w[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (b0 + b) * 16;
    const __mmask16 mask = tail_mask(n - n0);
    const __m512i corr = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(mask, wsum + n0), _mm512_set1_epi32(zx));
    const __m512 sc = _mm512_maskz_loadu_ps(mask, e.scale + n0), bi = _mm512_maskz_loadu_ps(mask, e.bias + n0);
    __m512 v[MR];
    for (int r = 0; r < MR; ++r) v[r] = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], corr));
    store16_rows<A>(c, v, MR, sc, bi, m0, n0, n, mask, y);
  }
}

template <int MR, Act A>
TS_Q512 void rows1x1(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t m0, int64_t k, int64_t n,
                     int32_t zx, const Epilogue& e, const EpiVec& c, void* y) {
  const int64_t blocks = (n + 15) / 16;
  int64_t b = 0;
  for (; b + 4 <= blocks; b += 4) tile1x1<MR, 4, A>(x, packed, wsum, m0, b, k, n, zx, e, c, y);
  switch (blocks - b) {  // the last 1-3 blocks of 16 channels in one pass over the rows' inputs
    case 3:
      return tile1x1<MR, 3, A>(x, packed, wsum, m0, b, k, n, zx, e, c, y);
    case 2:
      return tile1x1<MR, 2, A>(x, packed, wsum, m0, b, k, n, zx, e, c, y);
    case 1:
      return tile1x1<MR, 1, A>(x, packed, wsum, m0, b, k, n, zx, e, c, y);
    default:
      return;
  }
}

template <Act A>
TS_Q512 void conv1x1_rows(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t m0, int64_t m1,
                          int64_t k, int64_t n, int32_t zx, const Epilogue& e, void* y) {
  const EpiVec c = epi_vec(e);
  int64_t m = m0;  // 6 rows × 4 blocks: 24 accumulators, 4 weight registers and a broadcast of 32
  for (; m + 6 <= m1; m += 6) rows1x1<6, A>(x, packed, wsum, m, k, n, zx, e, c, y);
  for (; m + 3 <= m1; m += 3) rows1x1<3, A>(x, packed, wsum, m, k, n, zx, e, c, y);
  for (; m < m1; ++m) rows1x1<1, A>(x, packed, wsum, m, k, n, zx, e, c, y);
}

TS_Q512 void conv1x1_vnni(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t m0, int64_t m1,
                          int64_t k, int64_t n, int32_t zx, const Epilogue& e, void* y) {
  switch (e.act) {
    case Act::kRelu:
      return conv1x1_rows<Act::kRelu>(x, packed, wsum, m0, m1, k, n, zx, e, y);
    case Act::kHardswish:
      return conv1x1_rows<Act::kHardswish>(x, packed, wsum, m0, m1, k, n, zx, e, y);
    case Act::kSwish:
      return conv1x1_rows<Act::kSwish>(x, packed, wsum, m0, m1, k, n, zx, e, y);
    default:
      return conv1x1_rows<Act::kNone>(x, packed, wsum, m0, m1, k, n, zx, e, y);
  }
}

#ifdef TS_QAMX
#define TS_QTILE __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))

// The 64-byte operand of ldtilecfg (palette 1): every tile 16 rows of 64 bytes. Tiles 0-3 hold the int32
// sums of a 32-pixel × 32-channel step, 4-5 the two 16-pixel row blocks of inputs, 6-7 two 16-channel weight
// blocks (16 quads each).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The epilogue of a step's sums: rows [0, valid_rows) of the [32 pixels][32 channels] int32 block `sums`
// (blocks b0 and, when two, b0 + 1) for output pixels from m0.
template <Act A>
TS_Q512 void amx_epilogue(const int32_t* sums, int64_t valid_rows, int64_t m0, int64_t b0, int nb,
                          const int32_t* wsum, int64_t n, int32_t zx, const Epilogue& e, const EpiVec& c, void* y) {
  for (int b = 0; b < nb; ++b) {
    const int64_t n0 = (b0 + b) * 16;
    const __mmask16 mask = tail_mask(n - n0);
    const __m512i corr = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(mask, wsum + n0), _mm512_set1_epi32(zx));
    const __m512 sc = _mm512_maskz_loadu_ps(mask, e.scale + n0), bi = _mm512_maskz_loadu_ps(mask, e.bias + n0);
    for (int64_t r0 = 0; r0 < valid_rows; r0 += 4) {
      const int64_t rows = std::min<int64_t>(4, valid_rows - r0);
      __m512 v[4];
      for (int64_t r = 0; r < rows; ++r)
        v[r] = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(sums + (r0 + r) * 32 + b * 16), corr));
      store16_rows<A>(c, v, rows, sc, bi, m0 + r0, n0, n, mask, y);
    }
  }
}

// Steps [s0, s1) of the call, a step being (32-pixel unit, pair of 16-channel blocks), units outer. The
// inputs' rows are read 64 bytes at a time: past k they hold the next pixels' bytes, which meet the packed
// weight's zero padding; a unit whose reads could pass the end of x is copied to a zeroed [32][kpad] buffer.
template <Act A>
TS_QTILE void conv1x1_amx_steps(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t s0, int64_t s1,
                                int64_t m, int64_t k, int64_t n, int32_t zx, const Epilogue& e, void* y) {
  const EpiVec c = epi_vec(e);
  const int64_t quads = padded_quads(k), kpad = quads * 4, chunks = quads / 16;
  const int64_t blocks = (n + 15) / 16, pairs = (blocks + 1) / 2;
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  alignas(64) int32_t sums[32 * 32];
  std::vector<uint8_t> tail;
  int64_t tail_unit = -1;
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t unit = s / pairs, b0 = (s % pairs) * 2, m0 = unit * 32;
    const int nb = static_cast<int>(std::min<int64_t>(2, blocks - b0));
    const int64_t rows = std::min<int64_t>(32, m - m0);
    const uint8_t* a = x + m0 * k;
    int64_t lda = k;
    if ((m0 + 31) * k + kpad > m * k) {  // reads past x's end: this unit's rows from a padded copy
      if (tail_unit != unit) {
        tail.assign(32 * kpad, 0);
        for (int64_t r = 0; r < rows; ++r) std::memcpy(tail.data() + r * kpad, x + (m0 + r) * k, k);
        tail_unit = unit;
      }
      a = tail.data();
      lda = kpad;
    }
    const int8_t* w0 = packed + b0 * quads * 64;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t q = 0; q < chunks; ++q) {
      _tile_loadd(4, a + q * 64, lda);
      _tile_loadd(5, a + 16 * lda + q * 64, lda);
      _tile_loadd(6, w0 + q * 16 * 64, 64);
      _tile_dpbusd(0, 4, 6);
      _tile_dpbusd(2, 5, 6);
      if (nb == 2) {
        _tile_loadd(7, w0 + (quads + q * 16) * 64, 64);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(3, 5, 7);
      }
    }
    // [32 pixels][32 channels]: tile 0 the top-left 16 × 16, 1 top-right, 2 bottom-left, 3 bottom-right.
    _tile_stored(0, sums, 128);
    _tile_stored(1, sums + 16, 128);
    _tile_stored(2, sums + 16 * 32, 128);
    _tile_stored(3, sums + 16 * 32 + 16, 128);
    amx_epilogue<A>(sums, rows, m0, b0, nb, wsum, n, zx, e, c, y);
  }
  _tile_release();  // leaves the tile state to the next user (oneDNN loads its own configuration)
}

TS_QTILE void conv1x1_amx(const uint8_t* x, const int8_t* packed, const int32_t* wsum, int64_t s0, int64_t s1,
                          int64_t m, int64_t k, int64_t n, int32_t zx, const Epilogue& e, void* y) {
  switch (e.act) {
    case Act::kRelu:
      return conv1x1_amx_steps<Act::kRelu>(x, packed, wsum, s0, s1, m, k, n, zx, e, y);
    case Act::kHardswish:
      return conv1x1_amx_steps<Act::kHardswish>(x, packed, wsum, s0, s1, m, k, n, zx, e, y);
    case Act::kSwish:
      return conv1x1_amx_steps<Act::kSwish>(x, packed, wsum, s0, s1, m, k, n, zx, e, y);
    default:
      return conv1x1_amx_steps<Act::kNone>(x, packed, wsum, s0, s1, m, k, n, zx, e, y);
  }
}
#endif
#endif

// Work below this many multiply-adds runs on the calling thread: waking a second one costs more.
constexpr int64_t kSerialMacs = 1 << 20;

at::Tensor conv1x1_cpu(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& packed, const at::Tensor& wsum, const at::Tensor& scale,
                       const at::Tensor& bias, int64_t out_channels, c10::string_view act,
                       double out_scale, int64_t out_zp, bool out_u8, const std::optional<at::Tensor>& accum,
                       double accum_scale, int64_t accum_zp, c10::string_view isa) {
  TORCH_CHECK(x_in.dim() == 4 && (x_in.scalar_type() == at::kByte || x_in.scalar_type() == at::kFloat),
              "qconv1x1: x must be uint8 codes or float32 values [N, C, H, W]");
  TORCH_CHECK(x_in.is_contiguous(at::MemoryFormat::ChannelsLast), "qconv1x1: x must be channels-last");
  TORCH_CHECK(x_zp >= 0 && x_zp <= 255 && x_scale > 0, "qconv1x1: x_zp must be in 0..255 and x_scale positive");
  const int64_t k = x_in.size(1), n = out_channels, m = x_in.size(0) * x_in.size(2) * x_in.size(3);
  const int64_t blocks = (n + 15) / 16, quads = padded_quads(k);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() && packed.numel() == blocks * quads * 64,
              "qconv1x1: packed must be int8 of ", blocks * quads * 64, " bytes for ", n, " x ", k);
  TORCH_CHECK(wsum.scalar_type() == at::kInt && wsum.is_contiguous() && wsum.numel() == n,
              "qconv1x1: wsum must be int32 [", n, "]");
  check_vec(scale, n, "scale");
  check_vec(bias, n, "bias");
  Isa path = pick_isa(isa);
  // AMX computes 16 pixels at a time: fewer (squeeze-and-excite on a 1 × 1 map) stay on AVX-512, unless asked.
  if (path == Isa::kAmx && m < 16 && std::string(isa) == "auto") path = Isa::kVnni;
  const bool vnni = path != Isa::kPortable;
  const at::Tensor x = x_in.scalar_type() == at::kByte ? x_in : quantize_input(x_in, x_scale, x_zp, vnni);
  Epilogue e = make_epilogue(scale, bias, act, out_scale, out_zp, out_u8);
  at::Tensor acc_codes;
  if (accum.has_value() && accum->defined()) {
    TORCH_CHECK(accum->scalar_type() == at::kByte && accum->size(0) == x.size(0) && accum->size(1) == n &&
                    accum->size(2) == x.size(2) && accum->size(3) == x.size(3),
                "qconv1x1: accum must be uint8 codes of the output's shape");
    acc_codes = accum->contiguous(at::MemoryFormat::ChannelsLast);
    e.accum = acc_codes.data_ptr<uint8_t>();
    e.accum_scale = static_cast<float>(accum_scale);
    e.accum_zp = static_cast<float>(accum_zp);
  }
  at::Tensor y = at::empty({x.size(0), n, x.size(2), x.size(3)},
                           x.options().dtype(out_u8 ? at::kByte : at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  const uint8_t* xp = x.data_ptr<uint8_t>();
  const int8_t* wp = packed.data_ptr<int8_t>();
  const int32_t* sp = wsum.data_ptr<int32_t>();
  void* yp = y.data_ptr();
  const int32_t zx = static_cast<int32_t>(x_zp);
#ifdef TS_QAMX
  if (path == Isa::kAmx) {
    // Steps of 32 pixels × 32 channels; threads take runs of them, at least kSerialMacs of work each.
    const int64_t pairs = (blocks + 1) / 2, steps = (m + 31) / 32 * pairs;
    const int64_t grain = std::max<int64_t>(1, kSerialMacs / (32 * 32 * k));
    auto steps_run = [&](int64_t s0, int64_t s1) { conv1x1_amx(xp, wp, sp, s0, s1, m, k, n, zx, e, yp); };
    if (m * n * k < kSerialMacs) {
      steps_run(0, steps);
    } else {
      at::parallel_for(0, steps, grain, steps_run);
    }
    return y;
  }
#endif
  auto run = [&](int64_t m0, int64_t m1) {
#ifdef TS_QX86
    if (vnni) return conv1x1_vnni(xp, wp, sp, m0, m1, k, n, zx, e, yp);
#endif
    conv1x1_portable(xp, wp, sp, m0, m1, k, n, zx, e, yp);
  };
  if (m * n * k < kSerialMacs) {
    run(0, m);
  } else {
    // Threads take whole 6-row tiles, at least kSerialMacs of work each.
    const int64_t tiles = (m + 5) / 6, grain = std::max<int64_t>(1, kSerialMacs / (6 * n * k));
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) { run(t0 * 6, std::min(m, t1 * 6)); });
  }
  return y;
}


// ---- a 1×1 convolution's input codes from a squeeze-and-excite product (gate m broadcast over the map) ----
// codes = clamp(round_half_even((v[b, c, h, w] · m[b, c]) · (1 / s)) + zp, 0, 255) in one pass, without the
// float product in memory; v is x (float32) or (x − zx) · sx (uint8 codes); the products round as torch's
// x * m then quantize_per_tensor do.

struct MapValues {
  float sx, zx;  // codes' qparams (uint8 maps)
  inline float operator()(float v) const { return v; }
  inline float operator()(uint8_t q) const { return (static_cast<float>(q) - zx) * sx; }
};

#ifdef TS_QX86
TS_Q512 inline __m512 load_values(const float* p, __mmask16 mask, __m512, __m512) { return _mm512_maskz_loadu_ps(mask, p); }
TS_Q512 inline __m512 load_values(const uint8_t* p, __mmask16 mask, __m512 zx, __m512 sx) {
  const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p)));
  return _mm512_mul_ps(_mm512_sub_ps(q, zx), sx);
}

template <typename T>
TS_Q512 void scale_quantize_nhwc_vnni(const T* x, const float* m, uint8_t* q, int64_t pixels, int64_t c, float inv,
                                      int32_t zp, const MapValues& mv) {
  const __m512 iv = _mm512_set1_ps(inv), zx = _mm512_set1_ps(mv.zx), sx = _mm512_set1_ps(mv.sx);
  const __m512i z = _mm512_set1_epi32(zp);
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t j = 0; j < c; j += 16) {
      const __mmask16 mask = tail_mask(c - j);
      const __m512 v = _mm512_mul_ps(load_values(x + p * c + j, mask, zx, sx), _mm512_maskz_loadu_ps(mask, m + j));
      _mm_mask_storeu_epi8(q + p * c + j, mask, to_codes(v, iv, z));
    }
  }
}
#endif

inline uint8_t scale_quantize_one(float v, float m, float inv, float zp) {
  return static_cast<uint8_t>(std::min(std::max(std::nearbyint((v * m) * inv) + zp, 0.f), 255.f));
}

template <typename T>
void scale_quantize_run(const at::Tensor& x, const float* mp, uint8_t* qp, bool nhwc, float inv, int64_t zp,
                        const MapValues& mv) {
  const T* xp = x.data_ptr<T>();
  const int64_t b = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const float z = static_cast<float>(zp);
  const bool vnni = vnni_cpu();
  // Work items: (image, row of pixels) in channels-last, (image, channel) planes otherwise.
  at::parallel_for(0, b * (nhwc ? x.size(2) : c), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (nhwc) {
        const int64_t img = i / x.size(2), off = i * x.size(3) * c;
        const float* m = mp + img * c;
#ifdef TS_QX86
        if (vnni) {
          scale_quantize_nhwc_vnni<T>(xp + off, m, qp + off, x.size(3), c, inv, static_cast<int32_t>(zp), mv);
          continue;
        }
#endif
        for (int64_t j = 0; j < x.size(3) * c; ++j) qp[off + j] = scale_quantize_one(mv(xp[off + j]), m[j % c], inv, z);
      } else {
        const float m = mp[i];
        for (int64_t j = 0; j < hw; ++j) qp[i * hw + j] = scale_quantize_one(mv(xp[i * hw + j]), m, inv, z);
      }
    }
  });
}

at::Tensor scale_quantize_cpu(const at::Tensor& x, const at::Tensor& mult, double scale, int64_t zp, double x_scale,
                              int64_t x_zp) {
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kByte),
              "qscale_quantize: x must be float32 values or uint8 codes [N, C, H, W]");
  TORCH_CHECK(mult.scalar_type() == at::kFloat && mult.numel() == x.size(0) * x.size(1) && mult.is_contiguous(),
              "qscale_quantize: mult must be a contiguous float32 [N, C(, 1, 1)]");
  TORCH_CHECK(zp >= 0 && zp <= 255 && scale > 0 && x_zp >= 0 && x_zp <= 255 && x_scale > 0,
              "qscale_quantize: zero points must be in 0..255 and scales positive");
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor xc = nhwc ? x : x.contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte).memory_format(
                                          nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const MapValues mv{static_cast<float>(x_scale), static_cast<float>(x_zp)};
  const float inv = static_cast<float>(1.0 / scale);
  if (x.scalar_type() == at::kByte) {
    scale_quantize_run<uint8_t>(xc, mult.data_ptr<float>(), q.data_ptr<uint8_t>(), nhwc, inv, zp, mv);
  } else {
    scale_quantize_run<float>(xc, mult.data_ptr<float>(), q.data_ptr<uint8_t>(), nhwc, inv, zp, mv);
  }
  return q;
}

}  // namespace

// Whether qconv1x1's AMX path runs here (read once through ctypes by torchslim/kernels/ops.py).
extern "C" int torchslim_qconv_amx() { return amx_cpu() ? 1 : 0; }

TORCH_LIBRARY_IMPL(torchslim, CPU, m) {
  m.impl("qconv1x1", &conv1x1_cpu);
  m.impl("qscale_quantize", &scale_quantize_cpu);
}
