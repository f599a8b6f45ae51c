// Vector helpers of the fused CPU selective scan: the vector type as wide as the target allows, masked loads and
// stores, a branch-free exp, softplus and its gradient, horizontal sums, flush-to-zero, and the Problem struct the
// row kernels read. Included by selective_scan.cpp only (one translation unit, compiled by _native.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define SS_HAS_MXCSR 1
#endif

namespace {

constexpr int kMaxState = 256;

// Flush-to-zero and denormals-are-zero for the current thread, restored on scope exit. Decay products of
// strongly decaying channels pass through subnormals, which are slow on many x86 cores.
struct FlushDenormals {
#ifdef SS_HAS_MXCSR
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
#endif
};

// Vector width: the widest the target has (AVX-512: 64 bytes, AVX: 32, else 16: SSE2 / NEON). Wider vectors than
// the hardware would be split by the compiler and passed through memory, which was 15x slower.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct VT;
template <>
struct VT<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 4;
};
template <>
struct VT<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 8;
};

constexpr int log2i(int x) { return x <= 1 ? 0 : 1 + log2i(x / 2); }

template <typename T>
inline typename VT<T>::V vload(const T* p) {
  typename VT<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, typename VT<T>::V v) {
  std::memcpy(p, &v, sizeof(v));
}

// Load / store the first `cnt` lanes (the rest read as zero); for sequence tails.
template <typename T>
inline typename VT<T>::V vload_n(const T* p, int cnt) {
  if (cnt == VT<T>::W) return vload(p);
  typename VT<T>::V v = {};
  std::memcpy(&v, p, cnt * sizeof(T));
  return v;
}

template <typename T>
inline void vstore_n(T* p, typename VT<T>::V v, int cnt) {
  if (cnt == VT<T>::W) {
    vstore(p, v);
  } else {
    std::memcpy(p, &v, cnt * sizeof(T));
  }
}

template <typename T>
inline T hsum(typename VT<T>::V v) {
  T s = T(0);
  for (int i = 0; i < VT<T>::W; ++i) s += v[i];
  return s;
}

// Lane i of the result = the sum of v[i]'s lanes, for W vectors v[0..W-1] (v is overwritten). A log2(W)-level
// fold of two-input permutes: each level halves the lanes per vector while pairing vectors up. Batching W steps
// this way costs about a third of a horizontal sum per step, which was ~40% of the forward's time.
template <typename T>
struct FoldMasks {
  static constexpr int W = VT<T>::W;
  static constexpr int kLevels = log2i(W);
  typename VT<T>::I x[kLevels], y[kLevels];
  FoldMasks() {
    int level = 0;
    for (int G = W, S = 1; G > 1; G /= 2, S *= 2, ++level) {  // G lanes per step, S steps per vector
      for (int j = 0; j < W; ++j) {
        const int step = j / (G / 2), lane = j % (G / 2);
        const int src = step < S ? step * G + lane : (step - S) * G + lane + W;  // + W: the second operand
        x[level][j] = src;
        y[level][j] = src + G / 2;
      }
    }
  }
};

template <typename T>
inline typename VT<T>::V sum_lanes_transposed(typename VT<T>::V* v, const FoldMasks<T>& m) {
#if defined(__GNUC__) && !defined(__clang__)
  int count = VT<T>::W;
  for (int level = 0; level < FoldMasks<T>::kLevels; ++level) {
    for (int i = 0; i < count / 2; ++i) {
      v[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], m.x[level]) +
             __builtin_shuffle(v[2 * i], v[2 * i + 1], m.y[level]);
    }
    count /= 2;
  }
  return v[0];
#else
  (void)m;
  typename VT<T>::V out;
  for (int i = 0; i < VT<T>::W; ++i) out[i] = hsum<T>(v[i]);
  return out;
#endif
}

// exp(x) lane-wise, relative error about 1 ulp; 0 below the smallest normal result; saturates near the top.
inline VT<float>::V vexp(VT<float>::V x) {
  using V = VT<float>::V;
  using I = VT<float>::I;
  const V lo = V{} - 87.33654f;
  const V hi = V{} + 88.0f;
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const V t = xc * 1.44269504088896341f + magic;
  const V k = t - magic;
  const I ki = (I)t - (I)magic;
  V r = xc - k * 0.693359375f;  // Cody-Waite split of ln 2 (Cephes expf)
  r = r + k * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const V scale = (V)((ki + 127) << 23);
  return x < lo ? V{} : p * scale;
}

inline VT<double>::V vexp(VT<double>::V x) {
  using V = VT<double>::V;
  using I = VT<double>::I;
  const V lo = V{} - 708.39641853226408;
  const V hi = V{} + 709.0;
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V magic = V{} + 6755399441055744.0;  // 1.5 * 2^52
  const V t = xc * 1.4426950408889634 + magic;
  const V k = t - magic;
  const I ki = (I)t - (I)magic;
  V r = xc - k * 6.93145751953125e-1;
  r = r - k * 1.42860682030941723212e-6;
  // Taylor series to degree 13 on |r| <= ln2/2: truncation error below 1e-16 relative.
  V p = V{} + 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const V scale = (V)((ki + 1023) << 52);
  return x < lo ? V{} : p * scale;
}

// log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: an odd series in s, accurate to ~1 ulp
// with K terms (s^2 <= 1/9 per term), no cancellation for small e.
template <typename T, int K>
inline typename VT<T>::V vlog1p_unit(typename VT<T>::V e) {
  using V = typename VT<T>::V;
  const V s = e / (T(2) + e);
  const V s2 = s * s;
  V p = V{} + T(1) / T(2 * K - 1);
  for (int k = K - 2; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
  return T(2) * s * p;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), and x itself above 20 (torch's threshold).
template <typename T>
inline typename VT<T>::V vsoftplus(typename VT<T>::V x) {
  using V = typename VT<T>::V;
  constexpr int K = sizeof(T) == 4 ? 8 : 17;
  const V ax = x < T(0) ? -x : x;
  const V pos = x > T(0) ? x : V{};
  const V sp = pos + vlog1p_unit<T, K>(vexp(-ax));
  return x > T(20) ? x : sp;
}

// d softplus / dx = sigmoid(x), exactly 1 above the threshold where torch's softplus is the identity.
template <typename T>
inline typename VT<T>::V vsoftplus_grad(typename VT<T>::V x) {
  using V = typename VT<T>::V;
  const V sig = T(1) / (T(1) + vexp(-x));
  return x > T(20) ? V{} + T(1) : sig;
}

template <typename T>
struct Problem {
  const T* u;
  const T* delta;
  const T* bias;  // may be null
  int softplus;
  const T* A;
  const T* B;
  const T* C;
  const T* D;  // may be null
  const T* z;  // may be null
  int64_t batch, dim, len, nstate, groups;

  // The step sizes of one row into buf (len values).
  void step_sizes(int64_t row, T* buf) const {
    using V = typename VT<T>::V;
    constexpr int W = VT<T>::W;
    const T* x = delta + row * len;
    const T b = bias ? bias[row % dim] : T(0);
    for (int64_t t = 0; t < len; t += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, len - t));
      const V v = vload_n(x + t, cnt) + b;
      vstore_n(buf + t, softplus ? vsoftplus<T>(v) : v, cnt);
    }
  }

  // Offset of the (len, nstate) B / C rows that `row` = b * dim + d reads.
  int64_t group_offset(int64_t row) const {
    const int64_t b = row / dim, d = row % dim;
    return (b * groups + d / (dim / groups)) * len * nstate;
  }
};

constexpr int kMaxVec = kMaxState / VT<double>::W;

}  // namespace
