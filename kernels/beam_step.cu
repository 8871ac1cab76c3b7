// genrec's fused, trie-constrained beam step: the CUDA side of the contract in
// src/generate/step.rs (the CPU reference) and src/generate/kernel/mirror.rs (a
// line-by-line CPU port of this file, tested against the reference).
//
// One thread block per request. For one decode position it
//   1. restricts each beam's logits to the valid children of its trie node,
//   2. turns them into log-probabilities (with the beam's normaliser when one is
//      given, else a log-softmax over the valid children),
//   3. adds the beam's score, and
//   4. keeps the best `beams_out` continuations across all the request's beams,
//      writing (parent beam, code, child node, score) plus the two things the
//      next decode needs: the cache row to keep and the next token id.
// Nothing is copied to the host: logits, scores and nodes stay on the device.
//
// The trie is the flat layout of src/catalog/trie.rs (nodes numbered breadth-
// first, so a node's children are a contiguous run and edge e leads to node
// e + 1): dense `[node x codes] -> child` tables for the first depths (STATIC,
// arXiv 2602.22647: one coalesced row read per beam), CSR (child_start,
// child_code) below.
//
// Candidates are 64-bit keys: the order-preserving bits of the score above, and
// the complement of (parent * codes + code) below. Larger key = better, ties go
// to the smaller (parent, code), exactly as the CPU reference breaks them; keys
// are unique, so the selection is deterministic. The top `beams_out` keys are
// found by an 8-pass MSB radix select over a per-request scratch buffer, then
// sorted in shared memory (bitonic).
//
// Compiled to PTX for compute_90 by build.rs and JIT-loaded by the driver.

#include <stdint.h>

#define GENREC_NONE 0xFFFFFFFFu
#define GENREC_MAX_BEAMS 1024

__device__ __forceinline__ uint32_t ord_bits(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float from_ord_bits(uint32_t o) {
    uint32_t u = (o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o;
    return __uint_as_float(u);
}

__device__ __forceinline__ bool sorted_contains(const uint32_t* a, uint32_t lo, uint32_t hi, uint32_t x) {
    while (lo < hi) {
        uint32_t m = lo + (hi - lo) / 2;
        uint32_t v = a[m];
        if (v == x) return true;
        if (v < x) lo = m + 1; else hi = m;
    }
    return false;
}

// The i-th child slot of `node`: dense rows have `codes` slots (NONE where the
// code is no child), CSR nodes one slot per edge.
__device__ __forceinline__ void child_slot(
    const uint32_t* child_start, const uint32_t* child_code, const uint32_t* dense,
    uint32_t dense_base, uint32_t codes, uint32_t node, uint32_t i,
    uint32_t* code, uint32_t* child) {
    if (dense) {
        *code = i;
        *child = dense[(size_t)(node - dense_base) * codes + i];
    } else {
        uint32_t e = child_start[node] + i;
        *code = child_code[e];
        *child = e + 1;
    }
}

// Does nothing: `genrec gpu-check` times it as the launch-and-sync floor.
extern "C" __global__ void genrec_noop() {}

extern "C" __global__ void genrec_beam_step(
    const float* __restrict__ logits, uint32_t ld, uint32_t col0,   // row r*beams_in+b at logits[row*ld + col0 + code]
    const float* __restrict__ norm,                                  // [R*beams_in] or null
    const float* __restrict__ scores, const uint32_t* __restrict__ nodes,
    const uint32_t* __restrict__ child_start, const uint32_t* __restrict__ child_code,
    const uint32_t* __restrict__ dense, uint32_t dense_base,         // dense table of this depth, or null (CSR)
    const uint32_t* __restrict__ allow_start, const uint32_t* __restrict__ allow_nodes,  // per request, sorted; empty = all; null = none
    const uint32_t* __restrict__ ban_start, const uint32_t* __restrict__ ban_nodes,      // per request, sorted; null = none
    uint32_t beams_in, uint32_t beams_out, uint32_t codes,
    uint32_t token_offset, uint32_t pad_token,
    unsigned long long* __restrict__ scratch,                        // [R, beams_in*codes]
    uint32_t* __restrict__ out_parent, uint32_t* __restrict__ out_code, uint32_t* __restrict__ out_node,
    float* __restrict__ out_score, uint32_t* __restrict__ out_row, uint32_t* __restrict__ out_token) {
    __shared__ unsigned int s_count;
    __shared__ unsigned int s_hist[256];
    __shared__ unsigned long long s_prefix, s_mask;
    __shared__ unsigned int s_remaining, s_picked;
    __shared__ unsigned long long s_sel[GENREC_MAX_BEAMS];

    const uint32_t r = blockIdx.x;
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    unsigned long long* cands = scratch + (size_t)r * beams_in * codes;
    if (tid == 0) s_count = 0;
    __syncthreads();

    // Phases 1-3: one warp per beam computes its normaliser, then writes its
    // allowed continuations as keys (warp-aggregated slots in the scratch).
    for (uint32_t b = warp; b < beams_in; b += warps) {
        const uint32_t row = r * beams_in + b;
        const uint32_t node = nodes[row];
        const float base = scores[row];
        if (node == GENREC_NONE || !isfinite(base)) continue;
        const uint32_t slots = dense ? codes : child_start[node + 1] - child_start[node];
        if (slots == 0) continue;
        const float* x = logits + (size_t)row * ld + col0;
        float lse;
        if (norm) {
            lse = norm[row];
        } else {
            float m = -INFINITY;
            for (uint32_t i = lane; i < slots; i += 32) {
                uint32_t c, ch;
                child_slot(child_start, child_code, dense, dense_base, codes, node, i, &c, &ch);
                if (ch != GENREC_NONE) m = fmaxf(m, x[c]);
            }
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
            float s = 0.f;
            for (uint32_t i = lane; i < slots; i += 32) {
                uint32_t c, ch;
                child_slot(child_start, child_code, dense, dense_base, codes, node, i, &c, &ch);
                if (ch != GENREC_NONE) s += expf(x[c] - m);
            }
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
            lse = m + logf(s);
        }
        for (uint32_t i0 = 0; i0 < slots; i0 += 32) {
            const uint32_t i = i0 + lane;
            bool ok = false;
            unsigned long long key = 0;
            if (i < slots) {
                uint32_t c, ch;
                child_slot(child_start, child_code, dense, dense_base, codes, node, i, &c, &ch);
                ok = ch != GENREC_NONE;
                if (ok && allow_start) {
                    uint32_t lo = allow_start[r], hi = allow_start[r + 1];
                    ok = lo == hi || sorted_contains(allow_nodes, lo, hi, ch);
                }
                if (ok && ban_start) ok = !sorted_contains(ban_nodes, ban_start[r], ban_start[r + 1], ch);
                if (ok) {
                    const float sc = __fsub_rn(__fadd_rn(base, x[c]), lse);
                    // non-finite scores (+inf/NaN logits or normalisers, all--inf
                    // rows) are no continuation, as on the CPU
                    ok = isfinite(sc);
                    key = ((unsigned long long)ord_bits(sc) << 32) | (unsigned long long)(0xFFFFFFFFu - (b * codes + c));
                }
            }
            const unsigned vote = __ballot_sync(0xFFFFFFFFu, ok);
            unsigned first = 0;
            if (lane == 0 && vote) first = atomicAdd(&s_count, __popc(vote));
            first = __shfl_sync(0xFFFFFFFFu, first, 0);
            if (ok) cands[first + __popc(vote & ((1u << lane) - 1u))] = key;
        }
    }
    __syncthreads();
    const uint32_t n = s_count;
    const uint32_t k = n < beams_out ? n : beams_out;

    // Phase 4a: the k-th largest key (radix select, 8 bits per pass, MSB first).
    unsigned long long threshold = 0;
    if (n > beams_out) {
        if (tid == 0) { s_prefix = 0; s_mask = 0; s_remaining = beams_out; }
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (uint32_t i = tid; i < 256; i += blockDim.x) s_hist[i] = 0;
            __syncthreads();
            const unsigned long long prefix = s_prefix, mask = s_mask;
            for (uint32_t i = tid; i < n; i += blockDim.x) {
                const unsigned long long key = cands[i];
                if ((key & mask) == prefix) atomicAdd(&s_hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                unsigned int acc = 0, want = s_remaining;
                int d = 255;
                for (; d > 0; --d) {
                    if (acc + s_hist[d] >= want) break;
                    acc += s_hist[d];
                }
                s_remaining = want - acc;
                s_prefix |= (unsigned long long)d << shift;
                s_mask |= 255ull << shift;
            }
            __syncthreads();
        }
        threshold = s_prefix;
    }

    // Phase 4b: gather the k best into shared memory and sort them (descending).
    uint32_t p = 1;
    while (p < k) p <<= 1;
    for (uint32_t i = tid; i < p; i += blockDim.x) s_sel[i] = 0;
    if (tid == 0) s_picked = 0;
    __syncthreads();
    for (uint32_t i = tid; i < n; i += blockDim.x) {
        const unsigned long long key = cands[i];
        if (key >= threshold) s_sel[atomicAdd(&s_picked, 1u)] = key;
    }
    __syncthreads();
    for (uint32_t size = 2; size <= p; size <<= 1) {
        for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
            for (uint32_t i = tid; i < p; i += blockDim.x) {
                const uint32_t j = i ^ stride;
                if (j > i) {
                    const unsigned long long a = s_sel[i], c = s_sel[j];
                    const bool down = (i & size) == 0;
                    if (down ? a < c : a > c) { s_sel[i] = c; s_sel[j] = a; }
                }
            }
            __syncthreads();
        }
    }

    // Phase 5: decode the keys into the step's outputs.
    for (uint32_t j = tid; j < beams_out; j += blockDim.x) {
        const uint32_t slot = r * beams_out + j;
        if (j < k) {
            const unsigned long long key = s_sel[j];
            const uint32_t idx = 0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFull);
            const uint32_t parent = idx / codes, code = idx % codes;
            const uint32_t pn = nodes[r * beams_in + parent];
            uint32_t child;
            if (dense) {
                child = dense[(size_t)(pn - dense_base) * codes + code];
            } else {
                uint32_t lo = child_start[pn], hi = child_start[pn + 1];
                while (lo < hi) {
                    uint32_t m = lo + (hi - lo) / 2;
                    if (child_code[m] < code) lo = m + 1; else hi = m;
                }
                child = lo + 1;
            }
            out_parent[slot] = parent;
            out_code[slot] = code;
            out_node[slot] = child;
            out_score[slot] = from_ord_bits((uint32_t)(key >> 32));
            out_row[slot] = r * beams_in + parent;
            out_token[slot] = token_offset + code;
        } else {
            out_parent[slot] = 0;
            out_code[slot] = 0;
            out_node[slot] = GENREC_NONE;
            out_score[slot] = -INFINITY;
            out_row[slot] = r * beams_in;
            out_token[slot] = pad_token;
        }
    }
}
