// The GPU kernel of AlexpipePcaJitter (see pca_jitter.h for the meaning).
//
// One launch covers up to kMaxSamplesPerLaunch images: blockIdx.y picks the
// image, blocks along x stride over its H*W*3 elements, so reads of the uint8
// input and writes of the float output are both coalesced.
#include <cuda_runtime.h>

#include <cstdint>

#include "pca_jitter.h"

namespace alexpipe {
namespace {

// kernel parameters are limited to 4 KiB on every architecture this is built for
static_assert(sizeof(JitterLaunch) <= 4000, "JitterLaunch must fit in the kernel parameter space");

constexpr int kBlockSize = 256;
constexpr int kMaxBlocksPerSample = 64;

__global__ void PcaJitterKernel(const JitterLaunch launch) {
  const JitterSample &s = launch.samples[blockIdx.y];
  const std::int64_t elements = s.pixels * kChannels;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < elements;
       e += stride) {
    const float v = static_cast<float>(s.in[e]) + s.delta[e % kChannels];
    s.out[e] = fminf(fmaxf(v, 0.0f), 255.0f);
  }
}

}  // namespace

const char *LaunchPcaJitterGpu(const JitterSample *samples, int count, void *stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  for (int first = 0; first < count; first += kMaxSamplesPerLaunch) {
    JitterLaunch launch{};
    launch.count = count - first < kMaxSamplesPerLaunch ? count - first : kMaxSamplesPerLaunch;
    std::int64_t max_elements = 0;
    for (int i = 0; i < launch.count; ++i) {
      launch.samples[i] = samples[first + i];
      const std::int64_t elements = samples[first + i].pixels * kChannels;
      max_elements = elements > max_elements ? elements : max_elements;
    }
    if (max_elements == 0) continue;
    std::int64_t blocks = (max_elements + kBlockSize - 1) / kBlockSize;
    blocks = blocks < kMaxBlocksPerSample ? blocks : kMaxBlocksPerSample;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(launch.count));
    PcaJitterKernel<<<grid, kBlockSize, 0, cuda_stream>>>(launch);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  return nullptr;
}

}  // namespace alexpipe
