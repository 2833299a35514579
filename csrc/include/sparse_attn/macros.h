// Portability macros shared by the CPU and CUDA engines. No torch, no CUDA headers.
#pragma once

#if defined(__CUDACC__)
#define SA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SA_HOST_DEVICE inline
#endif
