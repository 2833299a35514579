// Portability macros shared by the CPU and CUDA engines. No torch, no CUDA headers.
#pragma once

#if defined(__CUDACC__)
#define SA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SA_HOST_DEVICE inline
#endif

// The CPU kernels are compiled once per instruction set (SA_CPU_NS = DEFAULT / AVX512).
// Shared algorithms sit in an inline namespace named after the build, so each build keeps
// its own copy: inline functions with external linkage would otherwise be merged by the
// linker, and an AVX-512 copy could end up running on a CPU without AVX-512. Plain data
// (params.h) stays outside: it is what the bindings hand to every build.
#if defined(SA_CPU_NS) && !defined(__CUDACC__)
#define SA_ABI_BEGIN inline namespace SA_CPU_NS {
#define SA_ABI_END }
#else
#define SA_ABI_BEGIN
#define SA_ABI_END
#endif
