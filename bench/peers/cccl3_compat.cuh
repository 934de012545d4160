// cccl3_compat.cuh: the one CCCL 2 name that cuCollections dc0f9fc (2024-10) still uses and CCCL 3.0
// (CUDA 13.0) removed: thrust::identity. Force-included (-include) when building the peer benchmark;
// nothing of ours uses it.
#pragma once
#include <thrust/functional.h>
#include <utility>

namespace thrust {
template <typename T = void>
struct identity {
    __host__ __device__ constexpr const T& operator()(const T& x) const noexcept { return x; }
};
template <>
struct identity<void> {
    template <typename U>
    __host__ __device__ constexpr U&& operator()(U&& x) const noexcept { return std::forward<U>(x); }
};
}  // namespace thrust
