// The blocked (team) path (docs/backends.md): every stage of a team schedule is block-diagonal
// (after a permutation of coordinates) with NB dense L x L blocks, L = 2t.  Stage 0 pairs the teams
// 2a, 2a+1 into one block holding both teams' own round robins; stage s >= 1 is team round s - 1,
// one block per meeting.  Each stage has t local rounds of t disjoint local pairs covering all L
// local coordinates; a local pair whose angle is absent (padding, Stiefel restriction, or the
// filler round of stage 0) has angle index -1 and is the identity.
//
// Tables (C-contiguous int32), indexed by (stage s, block nb, local round l, pair p):
//   local_i, local_j : (S, NB, t, t)  local pair, local_i < local_j (derived from the schedule's
//                                     own rounds by cupyortho.backends.team_plan.kernel_tables).
//   block_angle      : (S, NB, t, t)  public angle index of that pair, or -1.
// cs: (Bc, A, 2) cos/sin in the PUBLIC angle order, batch stride cs_bstride.
// These kernels work in place on global memory; one thread block per L x L block, its t rounds
// separated by __syncthreads (which also orders global memory within the block).
#include "givens.cuh"

// blocks[b, s, nb] = B_{t-1} ... B_0 of that block's local rounds.  blocks: (B, S, NB, L, L).
// Grid: B * S * NB thread blocks, index ((b * S) + s) * NB + nb.
template <typename T>
__global__ void build_blocks(T* __restrict__ blocks, const T* __restrict__ cs,
                             const int* __restrict__ block_angle, const int* __restrict__ local_i,
                             const int* __restrict__ local_j, const int t, const int S, const int NB,
                             const long long cs_bstride)
{
    const int L = 2 * t;
    const long long id = blockIdx.x;
    const long long b = id / ((long long)S * NB);
    const int sn = (int)(id - b * S * NB);  // s * NB + nb
    const int* tab_i = local_i + (long long)sn * t * t;
    const int* tab_j = local_j + (long long)sn * t * t;
    const int* ang = block_angle + (long long)sn * t * t;
    const T* csb = cs + b * cs_bstride;
    T* m = blocks + id * L * L;
    for (int e = threadIdx.x; e < L * L; e += blockDim.x) m[e] = (e / L == e % L) ? T(1) : T(0);
    __syncthreads();
    for (int l = 0; l < t; ++l) {
        for (int it = threadIdx.x; it < t * L; it += blockDim.x) {
            const int p = it / L;
            const int col = it - p * L;
            const int q = ang[l * t + p];
            if (q < 0) continue;
            T c, sv;
            load_cos_sin(csb, q, T(1), c, sv);
            givens_rotate(m[tab_i[l * t + p] * L + col], m[tab_j[l * t + p] * L + col], c, sv);
        }
        __syncthreads();
    }
}

// Block cotangent -> angle cotangents for stage s (the reduction-free formula inside
// one block).  w[b, nb] = W restricted to the block's coordinates, W = (dL/dY_s) Y_s^T taken at the
// stage's output (for the materialized VJP, W_s of the outer sweep).  For l = t-1 .. 0:
//   d[b, q] = w[j, i] - w[i, j] for the round's pairs (read before the update); w <- G_l^T w G_l.
// One thread owns one (pair a, pair e) 2 x 2 sub-block per round, so no entry is shared.
// w: (B, NB, L, L), overwritten.  d: (B, A) public order.  Grid: B * NB thread blocks.
template <typename T>
__global__ void block_vjp(T* __restrict__ w, T* __restrict__ d, const T* __restrict__ cs,
                          const int* __restrict__ block_angle, const int* __restrict__ local_i,
                          const int* __restrict__ local_j, const int t, const int s, const int NB,
                          const int A, const long long cs_bstride)
{
    const int L = 2 * t;
    const long long id = blockIdx.x;
    const long long b = id / NB;
    const int nb = (int)(id - b * NB);
    const long long sn = (long long)s * NB + nb;
    const int* tab_i = local_i + sn * t * t;
    const int* tab_j = local_j + sn * t * t;
    const int* ang = block_angle + sn * t * t;
    const T* csb = cs + b * cs_bstride;
    T* m = w + id * L * L;
    T* db = d + b * A;
    for (int l = t - 1; l >= 0; --l) {
        for (int it = threadIdx.x; it < t * t; it += blockDim.x) {
            const int a = it / t;
            const int e = it - a * t;
            const int qa = ang[l * t + a];
            const int qe = ang[l * t + e];
            const int ri = tab_i[l * t + a], rj = tab_j[l * t + a];
            const int ci = tab_i[l * t + e], cj = tab_j[l * t + e];
            T rc = T(1), rs = T(0), cc = T(1), cn = T(0);
            if (qa >= 0) load_cos_sin(csb, qa, T(1), rc, rs);
            if (qe >= 0) load_cos_sin(csb, qe, T(1), cc, cn);
            T m00 = m[ri * L + ci], m01 = m[ri * L + cj];
            T m10 = m[rj * L + ci], m11 = m[rj * L + cj];
            if (a == e && qa >= 0) db[qa] = m10 - m01;
            givens_rotate(m00, m10, rc, -rs);
            givens_rotate(m01, m11, rc, -rs);
            givens_rotate(m00, m01, cc, -cn);
            givens_rotate(m10, m11, cc, -cn);
            m[ri * L + ci] = m00;
            m[ri * L + cj] = m01;
            m[rj * L + ci] = m10;
            m[rj * L + cj] = m11;
        }
        __syncthreads();
    }
}
