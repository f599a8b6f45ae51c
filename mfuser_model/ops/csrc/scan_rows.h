// The per-row kernels of the fused CPU selective scan: forward_rows (the recurrence with the state in vector
// registers) and backward_rows (states recomputed into a per-thread buffer, then the reverse adjoint scan).
// Included by selective_scan.cpp only.
#pragma once

#include "scan_vector.h"

namespace {

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

}  // namespace
