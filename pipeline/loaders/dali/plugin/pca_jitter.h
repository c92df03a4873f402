// AlexpipePcaJitter: the PCA colour jitter of docs/design.md ("The augmentation", step 3), as a DALI operator.
//
// out[h, w, c] = clamp(in[h, w, c] + delta[c], 0, 255) in float32, with
// delta = M @ alpha (M: 3x3 row-major, V diag(s) from pipeline/augment/pca.py;
// alpha: the image's 3 PCA coefficients). The same delta for every pixel,
// padding included; no round trip through uint8, so normalisation can follow
// without rounding.
//
// This header is deliberately free of DALI and CUDA headers: it is shared by
// the C++ operator (pca_jitter.cc) and the CUDA kernel (pca_jitter.cu), so
// nvcc only ever compiles a small, self-contained translation unit.
#ifndef ALEXPIPE_DALI_PLUGIN_PCA_JITTER_H_
#define ALEXPIPE_DALI_PLUGIN_PCA_JITTER_H_

#include <cstdint>

namespace alexpipe {

constexpr int kChannels = 3;

// One image for the GPU kernel: where to read, where to write, how much.
struct JitterSample {
  const std::uint8_t *in;
  float *out;
  std::int64_t pixels;  // H * W
  float delta[kChannels];
};

// Samples travel to the GPU as a kernel parameter (no device buffer to manage);
// 64 samples of 40 bytes stay well inside the 4 KiB parameter limit.
constexpr int kMaxSamplesPerLaunch = 64;

struct JitterLaunch {
  JitterSample samples[kMaxSamplesPerLaunch];
  int count;
};

// delta = M @ alpha, accumulated in double (the reference's precision), stored as float.
inline void DeltaFromAlpha(const float *matrix, const float *alpha, float *delta) {
  for (int r = 0; r < kChannels; ++r) {
    double acc = 0.0;
    for (int k = 0; k < kChannels; ++k) {
      acc += static_cast<double>(matrix[r * kChannels + k]) * static_cast<double>(alpha[k]);
    }
    delta[r] = static_cast<float>(acc);
  }
}

inline float ClampPixel(float v) {
  return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

// The CPU kernel: one HWC uint8 image -> HWC float32.
inline void JitterImageCpu(const std::uint8_t *in, float *out, std::int64_t pixels, const float *delta) {
  const float d0 = delta[0], d1 = delta[1], d2 = delta[2];
  for (std::int64_t p = 0; p < pixels; ++p) {
    const std::int64_t i = p * kChannels;
    out[i] = ClampPixel(static_cast<float>(in[i]) + d0);
    out[i + 1] = ClampPixel(static_cast<float>(in[i + 1]) + d1);
    out[i + 2] = ClampPixel(static_cast<float>(in[i + 2]) + d2);
  }
}

// The GPU kernel's launcher (pca_jitter.cu): enqueues the samples on `stream`
// (a cudaStream_t) and returns nullptr, or a CUDA error message.
const char *LaunchPcaJitterGpu(const JitterSample *samples, int count, void *stream);

}  // namespace alexpipe

#endif  // ALEXPIPE_DALI_PLUGIN_PCA_JITTER_H_
