// Fused CPU selective scan (Mamba-1 S6), forward and backward.
//
// Plain C++ with an extern "C" interface (loaded with ctypes by mfuser_model/ops/_native.py), so it needs no
// torch headers and compiles in about a second. One (batch, channel) row is a sequential loop over L with the
// state h (n values) in vector registers (GCC/Clang vector extensions, as wide as the target allows: one AVX-512
// register per 16 floats), and rows are spread over threads. exp is a branch-free vector polynomial; it
// flushes results below the smallest normal number to zero, which only happens for decays that are zero to working
// precision anyway. The caller pads d_state to a multiple of the vector width (ss_lanes_f32 / ss_lanes_f64) with
// zeros.
//
// Layouts (all contiguous): u, delta, z, out, du, ddelta, dz: (batch, dim, len); A: (dim, n); D, bias: (dim,);
// B, C: (batch, groups, n, len), channel d reads group d / (dim / groups); last: (batch, dim, n). B and C are
// copied step-major, (batch, groups, len, n), inside the kernel, as are the gradients on the way out, so the caller
// runs no torch ops around it (each costs a thread-pool wake-up, tens of ms on a busy machine).
// The step size dt = softplus(delta + bias) (or delta + bias) is computed per row in the kernel, vectorised:
// torch's CPU softplus runs log1p one element at a time and would cost more than the scan itself.
//
// The backward recomputes each row's states into a per-thread buffer (len x n, L2-sized at MVFuser shapes),
// then runs the adjoint scan g_t = C_t dy_t + a_{t+1} g_{t+1} in reverse. Reductions over channels (dB, dC)
// go to partial buffers (one per fixed slot of rows) and over batch (dA, dD) to per-row partials; the caller sums them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <atomic>
#include <new>
#include <thread>
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

// NV: number of vectors per state (compile-time when > 0, else nstate / W at run time).
template <typename T, int NV>
void forward_rows(const Problem<T>& p, T* out, T* last, T* dtbuf, int64_t r0, int64_t r1) {
  using V = typename VT<T>::V;
  const FoldMasks<T> masks;
  constexpr int W = VT<T>::W;
  constexpr int kArr = NV > 0 ? NV : kMaxVec;
  const int nv = NV > 0 ? NV : static_cast<int>(p.nstate / W);
  const int64_t n = p.nstate;
  const int64_t L = p.len;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t d = row % p.dim;
    const T* Bb = p.B + p.group_offset(row);
    const T* Cb = p.C + p.group_offset(row);
    const T* u = p.u + row * L;
    p.step_sizes(row, dtbuf);
    const T* dt = dtbuf;
    T* y = out + row * L;
    V A[kArr], h[kArr];
    for (int j = 0; j < nv; ++j) {
      A[j] = vload(p.A + d * n + j * W);
      h[j] = V{};
    }
    const T Dd = p.D ? p.D[d] : T(0);
    for (int64_t t0 = 0; t0 < L; t0 += W) {  // W steps per block: their C·h sums are reduced together
      const int cnt = static_cast<int>(std::min<int64_t>(W, L - t0));
      V accs[W];
      for (int s = 0; s < cnt; ++s) {
        const int64_t t = t0 + s;
        const T dtt = dt[t];
        const T x = dtt * u[t];
        const T* Bt = Bb + t * n;
        const T* Ct = Cb + t * n;
        V acc = {};
        for (int j = 0; j < nv; ++j) {
          h[j] = vexp(A[j] * dtt) * h[j] + vload(Bt + j * W) * x;
          acc += h[j] * vload(Ct + j * W);
        }
        accs[s] = acc;
      }
      for (int s = cnt; s < W; ++s) accs[s] = V{};
      vstore_n(y + t0, sum_lanes_transposed<T>(accs, masks) + Dd * vload_n(u + t0, cnt), cnt);
    }
    if (p.z) {  // y *= silu(z)
      const T* z = p.z + row * L;
      for (int64_t t = 0; t < L; t += W) {
        const int cnt = static_cast<int>(std::min<int64_t>(W, L - t));
        const V zv = vload_n(z + t, cnt);
        vstore_n(y + t, vload_n(y + t, cnt) * zv / (T(1) + vexp(-zv)), cnt);
      }
    }
    if (last) {
      for (int j = 0; j < nv; ++j) vstore(last + row * n + j * W, h[j]);
    }
  }
}

template <typename T, int NV>
void backward_rows(const Problem<T>& p, const T* dout, T* du, T* ddelta, T* dz, T* dA_part, T* dD_part,
                   T* dbias_part, T* dB_part, T* dC_part, T* hbuf, T* abuf, T* dybuf, T* dtbuf, const T* zeros,
                   int64_t r0, int64_t r1) {
  using V = typename VT<T>::V;
  const FoldMasks<T> masks;
  constexpr int W = VT<T>::W;
  constexpr int kArr = NV > 0 ? NV : kMaxVec;
  const int nv = NV > 0 ? NV : static_cast<int>(p.nstate / W);
  const int64_t n = p.nstate;
  const int64_t L = p.len;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t d = row % p.dim;
    const int64_t off = p.group_offset(row);
    const T* Bb = p.B + off;
    const T* Cb = p.C + off;
    T* dBb = dB_part + off;
    T* dCb = dC_part + off;
    const T* u = p.u + row * L;
    p.step_sizes(row, dtbuf);
    const T* dt = dtbuf;
    const T* go = dout + row * L;
    V A[kArr], h[kArr];
    for (int j = 0; j < nv; ++j) {
      A[j] = vload(p.A + d * n + j * W);
      h[j] = V{};
    }
    const T Dd = p.D ? p.D[d] : T(0);

    // Forward sweep: states and decays of every step, and y before the gate.
    for (int64_t t0 = 0; t0 < L; t0 += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, L - t0));
      V accs[W];
      for (int s = 0; s < cnt; ++s) {
        const int64_t t = t0 + s;
        const T dtt = dt[t];
        const T x = dtt * u[t];
        const T* Bt = Bb + t * n;
        const T* Ct = Cb + t * n;
        V acc = {};
        for (int j = 0; j < nv; ++j) {
          const V a = vexp(A[j] * dtt);
          h[j] = a * h[j] + vload(Bt + j * W) * x;
          vstore(hbuf + t * n + j * W, h[j]);
          vstore(abuf + t * n + j * W, a);
          acc += h[j] * vload(Ct + j * W);
        }
        accs[s] = acc;
      }
      for (int s = cnt; s < W; ++s) accs[s] = V{};
      vstore_n(dybuf + t0, sum_lanes_transposed<T>(accs, masks) + Dd * vload_n(u + t0, cnt), cnt);
    }
    // Gate: dz = dout * y * silu'(z), dy = dout * silu(z).
    if (p.z) {
      const T* z = p.z + row * L;
      T* dzr = dz + row * L;
      for (int64_t t = 0; t < L; t += W) {
        const int cnt = static_cast<int>(std::min<int64_t>(W, L - t));
        const V zv = vload_n(z + t, cnt);
        const V gv = vload_n(go + t, cnt);
        const V sig = T(1) / (T(1) + vexp(-zv));
        vstore_n(dzr + t, gv * vload_n(dybuf + t, cnt) * sig * (T(1) + zv * (T(1) - sig)), cnt);
        vstore_n(dybuf + t, gv * zv * sig, cnt);
      }
    } else {
      std::memcpy(dybuf, go, L * sizeof(T));
    }

    // Reverse sweep; carry = a_{t+1} * g_{t+1}.
    V carry[kArr], dA_acc[kArr];
    for (int j = 0; j < nv; ++j) {
      carry[j] = V{};
      dA_acc[j] = V{};
    }
    T* dur = du + row * L;
    T* ddtr = ddelta + row * L;
    for (int64_t t_hi = L - 1; t_hi >= 0; t_hi -= W) {  // blocks of W steps, last block first
      const int64_t t_lo = std::max<int64_t>(0, t_hi - W + 1);
      const int cnt = static_cast<int>(t_hi - t_lo + 1);
      V sums_decay[W], sums_input[W];
      for (int s = cnt - 1; s >= 0; --s) {
        const int64_t t = t_lo + s;
        const T dyt = dybuf[t];
        const T dtt = dt[t];
        const T xt = dtt * u[t];
        const T* Bt = Bb + t * n;
        const T* Ct = Cb + t * n;
        const T* ht = hbuf + t * n;
        const T* hp = t > 0 ? hbuf + (t - 1) * n : zeros;
        const T* at = abuf + t * n;
        T* dBt = dBb + t * n;
        T* dCt = dCb + t * n;
        V s_decay = {}, s_input = {};
        for (int j = 0; j < nv; ++j) {
          const V g = carry[j] + vload(Ct + j * W) * dyt;
          const V a = vload(at + j * W);
          const V q = g * vload(hp + j * W) * a;  // dL/d(dt*A) of this step
          s_decay += q * A[j];
          s_input += g * vload(Bt + j * W);
          dA_acc[j] += q * dtt;
          vstore(dBt + j * W, vload(dBt + j * W) + g * xt);
          vstore(dCt + j * W, vload(dCt + j * W) + vload(ht + j * W) * dyt);
          carry[j] = a * g;
        }
        sums_decay[s] = s_decay;
        sums_input[s] = s_input;
      }
      for (int s = cnt; s < W; ++s) sums_decay[s] = sums_input[s] = V{};
      const V sd = sum_lanes_transposed<T>(sums_decay, masks);
      const V si = sum_lanes_transposed<T>(sums_input, masks);
      const V uv = vload_n(u + t_lo, cnt);
      vstore_n(ddtr + t_lo, sd + uv * si, cnt);
      vstore_n(dur + t_lo, vload_n(dt + t_lo, cnt) * si + Dd * vload_n(dybuf + t_lo, cnt), cnt);
    }
    for (int j = 0; j < nv; ++j) vstore(dA_part + row * n + j * W, dA_acc[j]);
    V dD_acc = {};
    for (int64_t t = 0; t < L; t += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, L - t));
      dD_acc += vload_n(dybuf + t, cnt) * vload_n(u + t, cnt);
    }
    dD_part[row] = hsum<T>(dD_acc);
    // ddt -> ddelta through the softplus; its sum over the row is this row's share of dbias.
    const T* x = p.delta + row * L;
    const T b = p.bias ? p.bias[d] : T(0);
    V dbias_acc = {};
    for (int64_t t = 0; t < L; t += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, L - t));
      V g = vload_n(ddtr + t, cnt);
      if (p.softplus) g *= vsoftplus_grad<T>(vload_n(x + t, cnt) + b);
      vstore_n(ddtr + t, g, cnt);
      dbias_acc += g;  // lanes past the tail loaded as zero
    }
    dbias_part[row] = hsum<T>(dbias_acc);
  }
}

bool valid(int64_t nstate, int64_t groups, int64_t dim, int width) {
  return nstate >= width && nstate <= kMaxState && nstate % width == 0 && groups >= 1 && dim % groups == 0;
}

// Runs body(worker, task) for task = 0..tasks-1 on `nthreads` threads (the caller's thread is worker 0), handing out
// tasks dynamically. Plain std::thread rather than OpenMP: on a shared, oversubscribed machine OpenMP's spinning
// barriers cost several times the kernel's own CPU time, while joining threads sleeps.
template <typename F>
void run_parallel(int nthreads, int64_t tasks, const F& body) {
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, tasks)));
  std::atomic<int64_t> next{0};
  auto work = [&](int worker) {
    FlushDenormals ftz;
    for (int64_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) body(worker, task);
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& thread : pool) thread.join();
}

constexpr int64_t kRowsPerTask = 4;

// (outer, n, len) -> (outer, len, n): each step's n values adjacent (B, C in), and the way back (dB, dC out).
template <typename T>
void to_step_major(const T* src, T* dst, int64_t outer, int64_t n, int64_t len) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t t = 0; t < len; ++t) dst[(o * len + t) * n + k] = src[(o * n + k) * len + t];
}

template <typename T>
int forward_impl(const Problem<T>& q, const T* Bg, const T* Cg, T* out, T* last, int nthreads) {
  constexpr int W = VT<T>::W;
  if (!valid(q.nstate, q.groups, q.dim, W)) return 1;
  const int64_t rows = q.batch * q.dim;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  std::vector<std::vector<T>> dtbuf;
  std::vector<T> Bt, Ct;
  try {
    dtbuf.assign(std::max(1, nthreads), std::vector<T>(q.len));
    Bt.resize(q.batch * q.groups * q.len * q.nstate);
    Ct.resize(Bt.size());
  } catch (const std::bad_alloc&) {
    return 2;
  }
  to_step_major(Bg, Bt.data(), q.batch * q.groups, q.nstate, q.len);
  to_step_major(Cg, Ct.data(), q.batch * q.groups, q.nstate, q.len);
  Problem<T> p = q;
  p.B = Bt.data();
  p.C = Ct.data();
  run_parallel(nthreads, tasks, [&](int worker, int64_t task) {
    const int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
    T* buf = dtbuf[worker].data();
    switch (p.nstate / W) {
      case 1: forward_rows<T, 1>(p, out, last, buf, r0, r1); break;
      case 2: forward_rows<T, 2>(p, out, last, buf, r0, r1); break;
      case 4: forward_rows<T, 4>(p, out, last, buf, r0, r1); break;
      default: forward_rows<T, 0>(p, out, last, buf, r0, r1); break;
    }
  });
  return 0;
}

// Rows are split into `nslots` fixed contiguous ranges, each with its own dB / dC partial and always processed
// whole by one thread, in row order; partials are then summed in slot order, and dA, dD, dbias in batch order. So
// the gradients are bit-identical whatever the thread count or timing (exact training resume depends on that).
template <typename T>
int backward_impl(const Problem<T>& q, const T* Bg, const T* Cg, const T* dout, T* du, T* ddelta, T* dz, T* dA,
                  T* dD, T* dbias, T* dB, T* dC, int64_t nslots, int nthreads) {
  constexpr int W = VT<T>::W;
  if (!valid(q.nstate, q.groups, q.dim, W) || nslots < 1) return 1;
  const int64_t rows = q.batch * q.dim;
  const int64_t n = q.nstate, L = q.len;
  const int64_t part = q.batch * q.groups * L * n;  // one slot's dB / dC partial
  struct Workspace {
    std::vector<T> hbuf, abuf, dybuf, dtbuf, zeros;
  };
  std::vector<Workspace> ws;
  std::vector<T> Bt, Ct, dB_part, dC_part, dA_row, dD_row, dbias_row;
  try {
    ws.resize(std::max(1, nthreads));
    for (auto& w : ws) {
      w.hbuf.resize(L * n);
      w.abuf.resize(L * n);
      w.dybuf.resize(L);
      w.dtbuf.resize(L);
      w.zeros.assign(n, T(0));
    }
    Bt.resize(part);
    Ct.resize(part);
    dB_part.resize(nslots * part);  // zeroed by each slot's own thread
    dC_part.resize(nslots * part);
    dA_row.resize(rows * n);
    dD_row.resize(rows);
    dbias_row.resize(rows);
  } catch (const std::bad_alloc&) {
    return 2;
  }
  to_step_major(Bg, Bt.data(), q.batch * q.groups, n, L);
  to_step_major(Cg, Ct.data(), q.batch * q.groups, n, L);
  Problem<T> p = q;
  p.B = Bt.data();
  p.C = Ct.data();
  run_parallel(nthreads, nslots, [&](int worker, int64_t slot) {
    const int64_t r0 = rows * slot / nslots, r1 = rows * (slot + 1) / nslots;
    Workspace& w = ws[worker];
    T* dBp = dB_part.data() + slot * part;
    T* dCp = dC_part.data() + slot * part;
    std::fill(dBp, dBp + part, T(0));
    std::fill(dCp, dCp + part, T(0));
    T *dAr = dA_row.data(), *dDr = dD_row.data(), *dbr = dbias_row.data();
    switch (p.nstate / W) {
      case 1:
        backward_rows<T, 1>(p, dout, du, ddelta, dz, dAr, dDr, dbr, dBp, dCp, w.hbuf.data(), w.abuf.data(),
                            w.dybuf.data(), w.dtbuf.data(), w.zeros.data(), r0, r1);
        break;
      case 2:
        backward_rows<T, 2>(p, dout, du, ddelta, dz, dAr, dDr, dbr, dBp, dCp, w.hbuf.data(), w.abuf.data(),
                            w.dybuf.data(), w.dtbuf.data(), w.zeros.data(), r0, r1);
        break;
      case 4:
        backward_rows<T, 4>(p, dout, du, ddelta, dz, dAr, dDr, dbr, dBp, dCp, w.hbuf.data(), w.abuf.data(),
                            w.dybuf.data(), w.dtbuf.data(), w.zeros.data(), r0, r1);
        break;
      default:
        backward_rows<T, 0>(p, dout, du, ddelta, dz, dAr, dDr, dbr, dBp, dCp, w.hbuf.data(), w.abuf.data(),
                            w.dybuf.data(), w.dtbuf.data(), w.zeros.data(), r0, r1);
        break;
    }
  });
  // dB, dC (b, g, n, L) = sum over slots of the (b, g, L, n) partials, one (b, g, state) row per task.
  run_parallel(nthreads, q.batch * q.groups * n, [&](int, int64_t task) {
    const int64_t o = task / n, k = task % n;
    for (int which = 0; which < 2; ++which) {
      const T* src = (which == 0 ? dB_part : dC_part).data() + o * L * n + k;
      T* dst = (which == 0 ? dB : dC) + (o * n + k) * L;
      for (int64_t t = 0; t < L; ++t) {
        T acc = T(0);
        for (int64_t slot = 0; slot < nslots; ++slot) acc += src[slot * part + t * n];
        dst[t] = acc;
      }
    }
  });
  for (int64_t d = 0; d < q.dim; ++d) {
    T sum_D = T(0), sum_bias = T(0);
    for (int64_t k = 0; k < n; ++k) dA[d * n + k] = T(0);
    for (int64_t b = 0; b < q.batch; ++b) {
      const int64_t row = b * q.dim + d;
      for (int64_t k = 0; k < n; ++k) dA[d * n + k] += dA_row[row * n + k];
      sum_D += dD_row[row];
      sum_bias += dbias_row[row];
    }
    dD[d] = sum_D;
    dbias[d] = sum_bias;
  }
  return 0;
}

}  // namespace

// Inputs: u, delta, z (batch, dim, len); A (dim, nstate); B, C (batch, groups, nstate, len); D, bias (dim,); bias,
// D and z may be null. nstate must be a multiple of the vector width (ss_lanes_f32 / _f64) and at most 256, dim a
// multiple of groups (see ss_lanes_*). Outputs: out (batch, dim, len), last (batch, dim, nstate) or null; gradients in the inputs'
// layouts, dA, dD, dbias summed over the batch (all written, whether or not the input was given).
// Returns 0; 1 on bad sizes; 2 when workspace memory cannot be allocated.
#define SS_DEFINE(SUFFIX, T)                                                                                     \
  extern "C" int ss_forward_##SUFFIX(const T* u, const T* delta, const T* bias, int softplus, const T* A,         \
                                     const T* B, const T* C, const T* D, const T* z, T* out, T* last,              \
                                     int64_t batch, int64_t dim, int64_t len, int64_t nstate, int64_t groups,      \
                                     int nthreads) {                                                               \
    const Problem<T> p{u, delta, bias, softplus, A, nullptr, nullptr, D, z, batch, dim, len, nstate, groups};    \
    return forward_impl<T>(p, B, C, out, last, nthreads);                                                        \
  }                                                                                                              \
  extern "C" int ss_backward_##SUFFIX(const T* u, const T* delta, const T* bias, int softplus, const T* A,        \
                                      const T* B, const T* C, const T* D, const T* z, const T* dout, T* du,       \
                                      T* ddelta, T* dz, T* dA, T* dD, T* dbias, T* dB, T* dC, int64_t batch,      \
                                      int64_t dim, int64_t len, int64_t nstate, int64_t groups, int64_t nslots,   \
                                      int nthreads) {                                                             \
    const Problem<T> p{u, delta, bias, softplus, A, nullptr, nullptr, D, z, batch, dim, len, nstate, groups};    \
    return backward_impl<T>(p, B, C, dout, du, ddelta, dz, dA, dD, dbias, dB, dC, nslots, nthreads);             \
  }

SS_DEFINE(f32, float)
SS_DEFINE(f64, double)

extern "C" int ss_abi_version() { return 6; }
// Lanes per vector (16 / 8 floats, 8 / 4 doubles on AVX-512 / AVX): nstate must be a multiple of it.
extern "C" int ss_lanes_f32() { return VT<float>::W; }
extern "C" int ss_lanes_f64() { return VT<double>::W; }
