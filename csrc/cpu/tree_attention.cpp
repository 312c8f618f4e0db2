// Tree attention on the CPU: the plan builder and the segment-major kernel.
//
// Kernel. For each chunk (a piece of one KV segment) and KV head, the chunk's K (transposed) and
// V are packed ONCE into fp32 tiles, and every query that attends the chunk -- the queries of all
// groups (branches) under the segment, times the gs query heads of the KV head -- is stacked
// into the M dimension of two register-blocked GEMMs (S = Q K^T, O = P V) with an exact softmax
// over the chunk in between. Instead of writing per-chunk partials and merging them afterwards,
// each chunk's partial (m, l, unnormalised O) is merged by log-sum-exp straight into a running
// per-(query, head) state (flash-attention's online softmax, one chunk at a time): no partial
// buffer, the same result. Threads own disjoint (KV head, group) pairs, so they never touch the
// same state and need no barrier.
//
// The inner loops (tree_attention_block.inc) use GCC vector extensions and are compiled three
// times, for AVX-512, AVX2+FMA and baseline x86-64, each with its own vector width and register
// tiles; the widest one the CPU has is picked at first use (LRM_TREE_ATTENTION_SIMD=generic|avx2|
// avx512 forces one). Other compilers / architectures get the baseline code. FMA contraction is
// allowed in this file (attention is checked against the reference with a tolerance, not bit
// for bit; the rest of _C keeps -ffp-contract=off).
#include "lrm/tree_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <thread>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#if defined(__clang__)
#pragma clang fp contract(fast)
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vector helpers are always inlined
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(LRM_NO_SIMD_PATHS)
#define LRM_HAVE_AVX512_PATH 1
#include <immintrin.h>
#endif

namespace lrm {

// ------------------------------------------------------------------------------------------
// Plan builder
// ------------------------------------------------------------------------------------------
int build_tree_attention_plan(const int32_t* parent, const int32_t* seg_len, int64_t N,
                              const int32_t* query_nodes, const int32_t* q_len, int64_t G,
                              int64_t chunk_size, TreeAttentionPlan& P) {
  if (chunk_size < 1) return kTaBadChunkSize;
  for (int64_t n = 0; n < N; ++n) {
    if (parent[n] < -1 || parent[n] >= N) return kTaBadParent;
    if (seg_len[n] < 0) return kTaBadSegLen;
  }
  for (int64_t g = 0; g < G; ++g) {
    const int32_t qn = query_nodes[g];
    if (qn < 0 || qn >= N) return kTaBadQueryNode;
    if (q_len[g] < 0 || q_len[g] > seg_len[qn]) return kTaBadQLen;
  }
  P = TreeAttentionPlan();
  // Per-group chains, root -> leaf.
  P.q_indptr.assign(G + 1, 0);
  P.kv_indptr.assign(G + 1, 0);
  std::vector<int32_t> chain;
  for (int64_t g = 0; g < G; ++g) {
    P.q_indptr[g + 1] = P.q_indptr[g] + q_len[g];
    chain.clear();
    for (int32_t n = query_nodes[g]; n != -1; n = parent[n]) {
      if ((int64_t)chain.size() > N) return kTaCycle;
      chain.push_back(n);
    }
    P.kv_seg.insert(P.kv_seg.end(), chain.rbegin(), chain.rend());
    P.kv_indptr[g + 1] = (int32_t)P.kv_seg.size();
  }
  // Which groups attend each segment (groups ascending, each at most once per segment).
  std::vector<int32_t> cnt(N + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    if (q_len[g] == 0) continue;
    for (int32_t i = P.kv_indptr[g]; i < P.kv_indptr[g + 1]; ++i)
      if (seg_len[P.kv_seg[i]] > 0) cnt[P.kv_seg[i] + 1]++;
  }
  std::vector<int32_t> seg_gptr(N + 1, 0);
  for (int64_t n = 0; n < N; ++n) seg_gptr[n + 1] = seg_gptr[n] + cnt[n + 1];
  std::vector<int32_t> seg_groups(seg_gptr[N]);
  std::vector<int32_t> fill(seg_gptr.begin(), seg_gptr.end() - 1);
  for (int64_t g = 0; g < G; ++g) {
    if (q_len[g] == 0) continue;
    for (int32_t i = P.kv_indptr[g]; i < P.kv_indptr[g + 1]; ++i) {
      const int32_t s = P.kv_seg[i];
      if (seg_len[s] > 0) seg_groups[fill[s]++] = (int32_t)g;
    }
  }
  // Chunks in ascending node order; entries per chunk; rows per entry.
  std::vector<int32_t> seg_first_chunk(N, -1), seg_nchunks(N, 0);
  P.chunk_indptr.push_back(0);
  P.row_indptr.push_back(0);
  for (int64_t s = 0; s < N; ++s) {
    const int32_t ng = seg_gptr[s + 1] - seg_gptr[s];
    if (ng == 0) continue;
    const int64_t len = seg_len[s];
    const int64_t nc = (len + chunk_size - 1) / chunk_size;
    seg_first_chunk[s] = (int32_t)P.chunk_seg.size();
    seg_nchunks[s] = (int32_t)nc;
    for (int64_t i = 0; i < nc; ++i) {
      const int32_t start = (int32_t)(i * len / nc), stop = (int32_t)((i + 1) * len / nc);
      const int32_t clen = stop - start;
      P.chunk_seg.push_back((int32_t)s);
      P.chunk_start.push_back(start);
      P.chunk_len.push_back(clen);
      for (int32_t k = seg_gptr[s]; k < seg_gptr[s + 1]; ++k) {
        const int32_t g = seg_groups[k];
        P.chunk_groups.push_back(g);
        const int32_t ql = q_len[g];
        const bool own = query_nodes[g] == s;
        for (int32_t j = 0; j < ql; ++j) {
          P.row_q.push_back(P.q_indptr[g] + j);
          int32_t lim = clen;
          if (own) {
            const int64_t vis = (int64_t)len - ql + j + 1 - start;  // tokens [start, start+vis)
            lim = (int32_t)std::max<int64_t>(0, std::min<int64_t>(clen, vis));
          }
          P.row_limit.push_back(lim);
        }
        P.row_indptr.push_back((int32_t)P.row_q.size());
      }
      P.chunk_indptr.push_back((int32_t)P.chunk_groups.size());
    }
  }
  // Merge lists: each group's entries in chain order (root -> leaf, chunks in order).
  const int64_t E = (int64_t)P.chunk_groups.size();
  std::vector<int32_t> entry_of;  // (chunk, group) -> entry: search the chunk's sorted groups
  P.merge_indptr.assign(G + 1, 0);
  P.merge_entries.reserve(E);
  for (int64_t g = 0; g < G; ++g) {
    if (q_len[g] > 0) {
      for (int32_t i = P.kv_indptr[g]; i < P.kv_indptr[g + 1]; ++i) {
        const int32_t s = P.kv_seg[i];
        if (seg_first_chunk[s] < 0) continue;
        for (int32_t c = seg_first_chunk[s]; c < seg_first_chunk[s] + seg_nchunks[s]; ++c) {
          const int32_t* b = P.chunk_groups.data() + P.chunk_indptr[c];
          const int32_t* e = P.chunk_groups.data() + P.chunk_indptr[c + 1];
          const int32_t* it = std::lower_bound(b, e, (int32_t)g);
          P.merge_entries.push_back((int32_t)(it - P.chunk_groups.data()));
        }
      }
    }
    P.merge_indptr[g + 1] = (int32_t)P.merge_entries.size();
  }
  return kTaOk;
}

// ------------------------------------------------------------------------------------------
// Kernel
// ------------------------------------------------------------------------------------------
namespace cpu {
namespace {

constexpr int kNrQK = 32;   // S columns are computed in multiples of this (a multiple of 2 W)
constexpr int kRowPad = 12;  // block rows are padded to a multiple of this (MRQK, MRPV divide it)
constexpr int kBM = 48;      // stacked (query, head) rows per block (a multiple of kRowPad)
constexpr int kVecMax = 16;  // widest vector (Dp = D rounded up to a multiple of this)
constexpr int64_t kPvTokens = 128;  // tokens per O = P V pass (the V block stays in L1)

// One namespace per instruction set, each with its vector width and micro-tile shapes (the
// accumulators must fit the register file: 16 registers for SSE / AVX2, 32 for AVX-512).
// Broadcast: on the AVX-512 path the intrinsic (GCC 12 builds a uniform 512-bit vector lane by
// lane otherwise); elsewhere `{} + x` (it cannot fold, because of -0.0f: add + one broadcast).
namespace generic {
constexpr int W = 4, MRQK = 6, MRPV = 3;
typedef float vf __attribute__((vector_size(16)));
typedef float vfu __attribute__((vector_size(16), aligned(4)));
typedef int32_t vi __attribute__((vector_size(16)));
inline __attribute__((always_inline)) vf bc(float x) { return (vf){} + x; }
#include "tree_attention_block.inc"
}  // namespace generic
#if defined(LRM_HAVE_AVX512_PATH)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
constexpr int W = 8, MRQK = 6, MRPV = 3;
typedef float vf __attribute__((vector_size(32)));
typedef float vfu __attribute__((vector_size(32), aligned(4)));
typedef int32_t vi __attribute__((vector_size(32)));
inline __attribute__((always_inline)) vf bc(float x) { return (vf)_mm256_set1_ps(x); }
#include "tree_attention_block.inc"
}  // namespace avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace avx512 {
constexpr int W = 16, MRQK = 12, MRPV = 6;
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
inline __attribute__((always_inline)) vf bc(float x) { return (vf)_mm512_set1_ps(x); }
#include "tree_attention_block.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

typedef void (*BlockFn)(const float*, int, int, const float*, const float*, int64_t, int64_t, int64_t,
                        const int32_t*, const int64_t*, float*, float*, float*, float*, float*);
BlockFn pick_block_fn() {
  // LRM_TREE_ATTENTION_SIMD=generic|avx2|avx512 forces a path (tests; a path the CPU lacks is
  // never taken).
  const char* force = std::getenv("LRM_TREE_ATTENTION_SIMD");
  const std::string want = force ? force : "";
#if defined(LRM_HAVE_AVX512_PATH)
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has512 && (want.empty() || want == "avx512")) return avx512::process_block;
  if (has2 && want != "generic") return avx2::process_block;
#endif
  return generic::process_block;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Reads n values starting at element offset `off` of a float32 / float16 buffer into dst (x mul).
inline void load_row(const void* base, int dtype, int64_t off, int64_t n, float mul, float* dst) {
  if (dtype == 0) {
    const float* s = static_cast<const float*>(base) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = s[i] * mul;
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(base) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]) * mul;
  }
}

}  // namespace

int tree_attention_fwd(const void* q, const void* k_pool, const void* v_pool, int dtype,
                       int64_t Tq, int64_t Hq, int64_t Hkv, int64_t D, int64_t C,
                       const int64_t* chunk_pool_start, const int32_t* chunk_len,
                       const int32_t* chunk_indptr, const int32_t* row_indptr,
                       const int32_t* row_q, const int32_t* row_limit,
                       const int32_t* chunk_groups, float scale, int num_threads, float* o,
                       float* lse) {
  if (Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || (dtype != 0 && dtype != 1)) return 1;
  const int64_t gs = Hq / Hkv;
  const int64_t Dp = (D + kVecMax - 1) / kVecMax * kVecMax;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> m_run(Tq * Hq, ninf), l_run(Tq * Hq, 0.0f);
  std::fill(o, o + Tq * Hq * D, 0.0f);
  int64_t maxL = 0;
  for (int64_t c = 0; c < C; ++c) maxL = std::max<int64_t>(maxL, chunk_len[c]);
  const int64_t maxLp = (maxL + kNrQK - 1) / kNrQK * kNrQK;
  const int nt = std::max(1, num_threads);
  static const BlockFn block_fn = pick_block_fn();

  auto worker = [&](int tid) {
    std::vector<float> Kt(Dp * maxLp), Vp(maxLp * Dp), Qb(kBM * Dp), S(kBM * std::max<int64_t>(maxLp, kNrQK)),
        Ob(kBM * Dp);
    int32_t lim[kBM];
    int64_t idx[kBM];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t L = chunk_len[c];
      const int64_t Lp = (L + kNrQK - 1) / kNrQK * kNrQK;
      for (int64_t h = 0; h < Hkv; ++h) {
        bool mine = false;
        for (int32_t e = chunk_indptr[c]; e < chunk_indptr[c + 1] && !mine; ++e)
          mine = (chunk_groups[e] + h) % nt == tid;
        if (!mine) continue;
        // Pack this chunk's K^T [Dp, Lp] and V [Lp, Dp] for KV head h, zero padded.
        std::fill(Kt.begin(), Kt.begin() + Dp * Lp, 0.0f);
        std::fill(Vp.begin(), Vp.begin() + Lp * Dp, 0.0f);
        float row[1024];
        std::vector<float> rowbuf;
        float* tmp = D <= 1024 ? row : (rowbuf.resize(D), rowbuf.data());
        for (int64_t t = 0; t < L; ++t) {
          const int64_t off = ((chunk_pool_start[c] + t) * Hkv + h) * D;
          load_row(k_pool, dtype, off, D, 1.0f, tmp);
          for (int64_t d = 0; d < D; ++d) Kt[d * Lp + t] = tmp[d];
          load_row(v_pool, dtype, off, D, 1.0f, Vp.data() + t * Dp);
        }
        // Stack the (query, head) rows of this thread's entries into blocks of kBM.
        int n = 0;
        auto flush = [&]() {
          if (n == 0) return;
          const int rows_p = (n + kRowPad - 1) / kRowPad * kRowPad;
          std::fill(Qb.begin() + (int64_t)n * Dp, Qb.begin() + (int64_t)rows_p * Dp, 0.0f);
          block_fn(Qb.data(), n, rows_p, Kt.data(), Vp.data(), Lp, Dp, D, lim, idx, S.data(),
                        Ob.data(), o, m_run.data(), l_run.data());
          n = 0;
        };
        for (int32_t e = chunk_indptr[c]; e < chunk_indptr[c + 1]; ++e) {
          if ((chunk_groups[e] + h) % nt != tid) continue;
          for (int32_t r = row_indptr[e]; r < row_indptr[e + 1]; ++r) {
            if (row_limit[r] <= 0) continue;
            for (int64_t gi = 0; gi < gs; ++gi) {
              const int64_t head = h * gs + gi;
              float* qd = Qb.data() + (int64_t)n * Dp;
              load_row(q, dtype, ((int64_t)row_q[r] * Hq + head) * D, D, scale, qd);
              for (int64_t d = D; d < Dp; ++d) qd[d] = 0.0f;
              lim[n] = row_limit[r];
              idx[n] = (int64_t)row_q[r] * Hq + head;
              if (++n == kBM) flush();
            }
          }
        }
        flush();
      }
    }
  };
  if (nt == 1) {
    worker(0);
  } else {
    std::vector<std::thread> ths;
    for (int t = 0; t < nt; ++t) ths.emplace_back(worker, t);
    for (auto& th : ths) th.join();
  }
  for (int64_t id = 0; id < Tq * Hq; ++id) {
    float* a = o + id * D;
    if (l_run[id] > 0.0f) {
      const float inv = 1.0f / l_run[id];
      for (int64_t d = 0; d < D; ++d) a[d] *= inv;
      lse[id] = m_run[id] + std::log(l_run[id]);
    } else {
      for (int64_t d = 0; d < D; ++d) a[d] = 0.0f;
      lse[id] = ninf;
    }
  }
  return 0;
}

}  // namespace cpu
}  // namespace lrm
