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
//
// Files: scan_vector.h (vector math, Problem), scan_rows.h (per-row forward and backward), this file (threads,
// layouts, the extern "C" entry points).

#include <atomic>
#include <new>
#include <thread>

#include "scan_rows.h"
#include "scan_vector.h"

namespace {

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
