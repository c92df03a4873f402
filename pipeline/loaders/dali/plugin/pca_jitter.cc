// The DALI operator AlexpipePcaJitter (CPU backend always; GPU backend when
// built with -DALEXPIPE_WITH_CUDA and linked with pca_jitter.cu).
//
// Inputs: 0 = uint8 HWC images (C = 3), 1 = per-sample alpha, float32 (3,),
// always on the CPU (it comes from fn.random.normal or an external source and
// is three numbers per image). Argument `matrix`: the 3x3 M of
// pipeline/augment/pca.py, row-major. Output: float32 HWC, see pca_jitter.h.
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "dali/core/format.h"
#include "dali/pipeline/operator/operator.h"
#include "pca_jitter.h"

namespace alexpipe {

namespace {

void ValidateInputs(const ::dali::TensorListShape<> &images_shape, ::daliDataType_t images_type,
                    const ::dali::TensorListShape<> &alpha_shape, ::daliDataType_t alpha_type) {
  using ::dali::make_string;
  DALI_ENFORCE(images_type == DALI_UINT8,
               make_string("AlexpipePcaJitter: images must be uint8, got ", images_type));
  DALI_ENFORCE(images_shape.sample_dim() == 3,
               make_string("AlexpipePcaJitter: images must be HWC (3 dimensions), got ",
                           images_shape.sample_dim()));
  DALI_ENFORCE(alpha_type == DALI_FLOAT,
               make_string("AlexpipePcaJitter: alpha must be float32, got ", alpha_type));
  DALI_ENFORCE(alpha_shape.num_samples() == images_shape.num_samples(),
               make_string("AlexpipePcaJitter: ", alpha_shape.num_samples(), " alpha samples for ",
                           images_shape.num_samples(), " images"));
  for (int i = 0; i < images_shape.num_samples(); ++i) {
    DALI_ENFORCE(images_shape.tensor_shape_span(i)[2] == kChannels,
                 make_string("AlexpipePcaJitter: images must have 3 channels, sample ", i, " has ",
                             images_shape.tensor_shape_span(i)[2]));
    DALI_ENFORCE(alpha_shape.tensor_size(i) == kChannels,
                 make_string("AlexpipePcaJitter: alpha must hold 3 values per image, sample ", i,
                             " has ", alpha_shape.tensor_size(i)));
  }
}

}  // namespace

template <typename Backend>
class PcaJitter : public ::dali::Operator<Backend> {
 public:
  explicit PcaJitter(const ::dali::OpSpec &spec) : ::dali::Operator<Backend>(spec) {
    const std::vector<float> m = spec.GetRepeatedArgument<float>("matrix");
    DALI_ENFORCE(m.size() == matrix_.size(),
                 ::dali::make_string("AlexpipePcaJitter: `matrix` must hold 9 values (3x3, row-major), got ",
                                     m.size()));
    std::copy(m.begin(), m.end(), matrix_.begin());
  }

  PcaJitter(const PcaJitter &) = delete;
  PcaJitter &operator=(const PcaJitter &) = delete;

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws) override {
    const auto &images = ws.Input<Backend>(0);
    const auto &alpha = ws.Input<::dali::CPUBackend>(1);
    ValidateInputs(images.shape(), images.type(), alpha.shape(), alpha.type());
    output_desc.resize(1);
    output_desc[0] = {images.shape(), DALI_FLOAT};
    return true;
  }

  void RunImpl(::dali::Workspace &ws) override;

 private:
  std::array<float, kChannels * kChannels> matrix_{};
};

template <>
void PcaJitter<::dali::CPUBackend>::RunImpl(::dali::Workspace &ws) {
  const auto &images = ws.Input<::dali::CPUBackend>(0);
  const auto &alpha = ws.Input<::dali::CPUBackend>(1);
  auto &output = ws.Output<::dali::CPUBackend>(0);
  output.SetLayout(images.GetLayout());
  const int n = images.num_samples();
  if (n == 0) return;
  auto &pool = ws.GetThreadPool();
  // a few contiguous ranges per thread: 32x32 images are too small to be a task each
  const int chunks = std::min(n, std::max(1, pool.NumThreads() * 4));
  for (int c = 0; c < chunks; ++c) {
    const int begin = static_cast<int>(static_cast<std::int64_t>(n) * c / chunks);
    const int end = static_cast<int>(static_cast<std::int64_t>(n) * (c + 1) / chunks);
    pool.AddWork(
        [&, begin, end](int) {
          for (int i = begin; i < end; ++i) {
            float delta[kChannels];
            DeltaFromAlpha(matrix_.data(), alpha.tensor<float>(i), delta);
            JitterImageCpu(images.tensor<std::uint8_t>(i), output.mutable_tensor<float>(i),
                           images.shape().tensor_size(i) / kChannels, delta);
          }
        },
        end - begin);
  }
  pool.RunAll();
}

#ifdef ALEXPIPE_WITH_CUDA
template <>
void PcaJitter<::dali::GPUBackend>::RunImpl(::dali::Workspace &ws) {
  const auto &images = ws.Input<::dali::GPUBackend>(0);
  const auto &alpha = ws.Input<::dali::CPUBackend>(1);
  auto &output = ws.Output<::dali::GPUBackend>(0);
  output.SetLayout(images.GetLayout());
  const int n = images.num_samples();
  if (n == 0) return;
  std::vector<JitterSample> samples(n);
  for (int i = 0; i < n; ++i) {
    samples[i].in = images.tensor<std::uint8_t>(i);
    samples[i].out = output.mutable_tensor<float>(i);
    samples[i].pixels = images.shape().tensor_size(i) / kChannels;
    DeltaFromAlpha(matrix_.data(), alpha.tensor<float>(i), samples[i].delta);
  }
  const char *error = LaunchPcaJitterGpu(samples.data(), n, ws.stream());
  DALI_ENFORCE(error == nullptr, ::dali::make_string("AlexpipePcaJitter: CUDA launch failed: ", error));
}
#endif

}  // namespace alexpipe

DALI_SCHEMA(AlexpipePcaJitter)
    .DocStr(R"(PCA colour jitter (AlexNet, Krizhevsky et al. 2012) for uint8 HWC RGB images.

Adds ``delta = matrix @ alpha`` to every pixel and clamps to [0, 255]; the output is float32
so that normalisation can follow without rounding through uint8.)")
    .NumInput(2)
    .NumOutput(1)
    .InputDox(0, "images", "TensorList of uint8 HWC", "Images with 3 channels.")
    .InputDox(1, "alpha", "TensorList of float32 (3,)", "Per-image PCA coefficients (CPU).")
    .InputDevice(1, ::dali::InputDevice::CPU)
    .InputLayout(0, "HWC")
    .AddArg("matrix", "3x3 matrix V diag(s), row-major: delta = matrix @ alpha.", DALI_FLOAT_VEC);

DALI_REGISTER_OPERATOR(AlexpipePcaJitter, ::alexpipe::PcaJitter<::dali::CPUBackend>, ::dali::CPU);
#ifdef ALEXPIPE_WITH_CUDA
DALI_REGISTER_OPERATOR(AlexpipePcaJitter, ::alexpipe::PcaJitter<::dali::GPUBackend>, ::dali::GPU);
#endif
