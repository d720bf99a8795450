// A static int8 convolution layer's call, bound once: the packed weight, its epilogue constants and (for a
// k × k or strided layer) its im2col geometry held by a C++ object that Python calls with the input alone.
//
// Calling torchslim::qconv1x1 from Python goes through torch.ops' argument parsing: about 5 µs a call plus
// about half a microsecond per argument, 14 µs for its 16 (measured with a one-pixel input, whose arithmetic
// is a microsecond). A batch-1 MobileNet / EfficientNet makes 60 and more such calls per image. A pybind11
// call with one tensor argument costs about a microsecond; the plan then calls the same operators through
// the C++ dispatcher, so dispatch modes (torchslim's MAC counter, a profiler) still see torchslim::qim2col and
// torchslim::qconv1x1, and the results are the operators' own.

#include <torch/extension.h>

#include <string>
#include <vector>

namespace {

using Conv1x1Fn = at::Tensor(const at::Tensor&, double, int64_t, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, int64_t, c10::string_view, double, int64_t, bool,
                             const std::optional<at::Tensor>&, double, int64_t, c10::string_view);
using Im2colFn = at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, double);

using DwConvFn = at::Tensor(const at::Tensor&, double, int64_t, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view,
                            double, int64_t, bool, c10::string_view);

const c10::TypedOperatorHandle<Conv1x1Fn>& conv1x1_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("torchslim::qconv1x1", "").typed<Conv1x1Fn>();
  return op;
}

const c10::TypedOperatorHandle<Im2colFn>& im2col_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("torchslim::qim2col", "").typed<Im2colFn>();
  return op;
}

const c10::TypedOperatorHandle<DwConvFn>& dwconv_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("torchslim::qdwconv", "").typed<DwConvFn>();
  return op;
}

struct QConvPlan {
  at::Tensor packed, wsum, scale, bias;
  double x_scale;
  int64_t x_zp, out_channels;
  std::string act;
  double out_scale;
  int64_t out_zp;
  bool out_u8;
  std::vector<int64_t> kernel, stride, padding;
  bool pointwise;

  QConvPlan(at::Tensor packed_, at::Tensor wsum_, at::Tensor scale_, at::Tensor bias_, double x_scale_, int64_t x_zp_,
            std::string act_, double out_scale_, int64_t out_zp_, bool out_u8_, std::vector<int64_t> kernel_,
            std::vector<int64_t> stride_, std::vector<int64_t> padding_)
      : packed(std::move(packed_)), wsum(std::move(wsum_)), scale(std::move(scale_)), bias(std::move(bias_)),
        x_scale(x_scale_), x_zp(x_zp_), out_channels(wsum.numel()), act(std::move(act_)), out_scale(out_scale_),
        out_zp(out_zp_), out_u8(out_u8_), kernel(std::move(kernel_)), stride(std::move(stride_)),
        padding(std::move(padding_)) {
    TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, "QConvPlan: 2 values per argument");
    pointwise = kernel[0] == 1 && kernel[1] == 1 && stride[0] == 1 && stride[1] == 1 && padding[0] == 0 &&
                padding[1] == 0;
  }

  // The input as the kernels take it: uint8 codes or float32 values, channels-last; then its im2col rows
  // (qim2col takes a contiguous float32 image as it is and chooses its layout itself).
  at::Tensor rows(const at::Tensor& x_in) const {
    at::Tensor x = x_in.scalar_type() == at::kByte ? x_in : x_in.to(at::kFloat);
    if (pointwise || !(x.scalar_type() == at::kFloat && x.is_contiguous()))
      x = x.contiguous(at::MemoryFormat::ChannelsLast);
    return pointwise ? x : im2col_op().call(x, kernel, stride, padding, x_zp, x_scale);
  }

  // The layer: its activation, then uint8 codes (out_u8) or float32.
  at::Tensor run(const at::Tensor& x) const {
    return conv1x1_op().call(rows(x), x_scale, x_zp, packed, wsum, scale, bias, out_channels, act, out_scale, out_zp,
                             out_u8, std::nullopt, 1.0, 0, "auto");
  }

  // The layer with a residual operand's codes added before ReLU (relu) or nothing; uint8 codes out.
  at::Tensor accumulate(const at::Tensor& x, const at::Tensor& accum, double accum_scale, int64_t accum_zp,
                        bool relu) const {
    return conv1x1_op().call(rows(x), x_scale, x_zp, packed, wsum, scale, bias, out_channels, relu ? "relu" : "none",
                             out_scale, out_zp, true, accum, accum_scale, accum_zp, "auto");
  }
};

// A depthwise layer's call (torchslim::qdwconv): its int8 quads of taps, wsum, epilogue constants and geometry.
struct QDwConvPlan {
  at::Tensor weight, wsum, scale, bias;
  double x_scale;
  int64_t x_zp;
  std::string act;
  double out_scale;
  int64_t out_zp;
  bool out_u8;
  std::vector<int64_t> kernel, stride, padding;

  QDwConvPlan(at::Tensor weight_, at::Tensor wsum_, at::Tensor scale_, at::Tensor bias_, double x_scale_,
              int64_t x_zp_, std::string act_, double out_scale_, int64_t out_zp_, bool out_u8_,
              std::vector<int64_t> kernel_, std::vector<int64_t> stride_, std::vector<int64_t> padding_)
      : weight(std::move(weight_)), wsum(std::move(wsum_)), scale(std::move(scale_)), bias(std::move(bias_)),
        x_scale(x_scale_), x_zp(x_zp_), act(std::move(act_)), out_scale(out_scale_), out_zp(out_zp_),
        out_u8(out_u8_), kernel(std::move(kernel_)), stride(std::move(stride_)), padding(std::move(padding_)) {}

  at::Tensor run(const at::Tensor& x_in) const {
    const at::Tensor x = x_in.scalar_type() == at::kByte ? x_in : x_in.to(at::kFloat);
    return dwconv_op().call(x, x_scale, x_zp, weight, wsum, scale, bias, kernel, stride, padding, act, out_scale,
                            out_zp, out_u8, "auto");
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<QConvPlan>(m, "QConvPlan")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, double, int64_t, std::string, double,
                          int64_t, bool, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>>())
      .def("__call__", &QConvPlan::run)
      .def("accumulate", &QConvPlan::accumulate);
  pybind11::class_<QDwConvPlan>(m, "QDwConvPlan")
      .def(pybind11::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, double, int64_t, std::string, double,
                          int64_t, bool, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>>())
      .def("__call__", &QDwConvPlan::run);
}
