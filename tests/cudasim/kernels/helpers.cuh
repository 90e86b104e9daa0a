// Included helper, so the harness's include path and header hashing are exercised.
#pragma once
template <typename T>
__device__ __forceinline__ T add(const T a, const T b) { return a + b; }
