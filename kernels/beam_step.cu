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
// A live catalog adds the overlay's patched nodes (StepTrie: a node an edit
// changed reads its children from a record, the others from the base) and
// a request's priors (StepPriors: the first level's prior, the new-item
// rule, the trending lift), so that live edits, soft steering and trending
// keep the step on the device.
//
// Candidates are 64-bit keys: the order-preserving bits of the score above, and
// the complement of (parent * codes + code) below. Larger key = better, ties go
// to the smaller (parent, code), exactly as the CPU reference breaks them; keys
// are unique, so the selection is deterministic. Two kernels find the top
// `beams_out` keys (src/generate/kernel/contract.rs, `BeamKernel`):
// - genrec_beam_step writes every candidate's key to a per-request scratch
//   buffer and runs an 8-pass MSB radix select over all of them, then sorts
//   the chosen keys in shared memory (bitonic);
// - genrec_beam_step_pool first takes each lane's best score (32 per beam);
//   their beams_out-th largest is a lower bound on the answer's last score,
//   so a second pass keeps only the candidates at or above it, in shared
//   memory, and sorts them there. Too many survivors for the pool: the first
//   kernel's path. Same answer, key for key.
//
// Compiled to PTX for compute_90 by build.rs and JIT-loaded by the driver.

#include <stdint.h>

#define GENREC_NONE 0xFFFFFFFFu
#define GENREC_MAX_BEAMS 1024
#define GENREC_POOL_MAX 2048
#define GENREC_FULL 0xFFFFFFFFu

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

// The trie at the step's depth: a dense table (null below the dense depths)
// or the CSR arrays, and the live overlay's patched nodes above them
// (src/generate/kernel/patch.rs): patch_slot[node] is 0 (the base's
// children) or 1 + the offset of a record whose first code entry is the
// number of children, followed by their codes, node ids and items. Nodes at
// or past base_nodes exist only in the overlay.
struct StepTrie {
    const uint32_t* child_start;
    const uint32_t* child_code;
    const uint32_t* dense;
    uint32_t dense_base;
    uint32_t codes;
    const uint32_t* patch_slot;  // null: no patch
    uint32_t patch_nodes;        // entries of patch_slot
    const uint32_t* patch_code;
    const uint32_t* patch_node;
    const uint32_t* patch_item;
    const uint32_t* leaf_item;   // the base's items by leaf (null: not needed)
    uint32_t leaves_start;       // first leaf id of the base
    uint32_t base_nodes;
};

// Per-request sorted node lists (CSR): allowed children (an empty list allows
// all; null: no request restricts) and banned ones (null: none).
struct StepFilters {
    const uint32_t* allow_start;
    const uint32_t* allow_nodes;
    const uint32_t* ban_start;
    const uint32_t* ban_nodes;
};

// What a step adds to the logits (src/generate/kernel/priors.rs), in this
// order: the first level's prior ([R, codes], -0.0 for none), a new leaf's
// best trained sibling (siblings[r] != 0; leaves of items at or past
// trained_rows are new), and w * the trending lift of the child
// (trend_w[r] != 0; sorted (node, lift) lists per request).
struct StepPriors {
    const float* first;
    const uint32_t* siblings;
    uint32_t trained_rows;
    const float* trend_w;
    const uint32_t* trend_lo;
    const uint32_t* trend_hi;
    const uint32_t* trend_node;
    const float* trend_lift;
};

// A node's children: a dense row (`codes` slots, NONE where the code is no
// child), the base's CSR run, or a patched node's record.
struct Kids {
    const uint32_t* dense_row;
    const uint32_t* codes;
    const uint32_t* nodes;  // patched records only
    const uint32_t* items;  // patched records only
    uint32_t first;         // CSR: the first child's id
    uint32_t n;             // slots
};

__device__ __forceinline__ Kids kids_of(const StepTrie& t, uint32_t node) {
    Kids k = {nullptr, nullptr, nullptr, nullptr, 0u, 0u};
    if (t.patch_slot && node < t.patch_nodes) {
        const uint32_t s = t.patch_slot[node];
        if (s != 0) {
            const uint32_t off = s - 1;
            k.n = t.patch_code[off];
            k.codes = t.patch_code + off + 1;
            k.nodes = t.patch_node + off + 1;
            k.items = t.patch_item + off + 1;
            return k;
        }
    }
    if (node >= t.base_nodes) return k;  // an overlay node without children
    if (t.dense) {
        k.dense_row = t.dense + (size_t)(node - t.dense_base) * t.codes;
        k.n = t.codes;
    } else {
        const uint32_t s = t.child_start[node];
        k.codes = t.child_code + s;
        k.first = s + 1;
        k.n = t.child_start[node + 1] - s;
    }
    return k;
}

// Slot i: its code and child (NONE: a dense slot with no child).
__device__ __forceinline__ void kid(const Kids& k, uint32_t i, uint32_t* code, uint32_t* child) {
    if (k.dense_row) {
        *code = i;
        *child = k.dense_row[i];
    } else {
        *code = k.codes[i];
        *child = k.nodes ? k.nodes[i] : k.first + i;
    }
}

// The item of slot i's child (a leaf's; NONE for an inner node).
__device__ __forceinline__ uint32_t kid_item(const StepTrie& t, const Kids& k, uint32_t i, uint32_t child) {
    if (k.items) return k.items[i];
    if (!t.leaf_item || child == GENREC_NONE || child < t.leaves_start || child >= t.base_nodes) return GENREC_NONE;
    return t.leaf_item[child - t.leaves_start];
}

// The child along `code` (of a selected key: it exists).
__device__ __forceinline__ uint32_t kid_along(const Kids& k, uint32_t code) {
    if (k.dense_row) return k.dense_row[code];
    uint32_t lo = 0, hi = k.n;
    while (lo < hi) {
        const uint32_t m = lo + (hi - lo) / 2;
        if (k.codes[m] < code) lo = m + 1; else hi = m;
    }
    return k.nodes ? k.nodes[lo] : k.first + lo;
}

// A live beam as the step reads it: its children, its logits row, and the
// request's priors that apply to it.
struct Beam {
    Kids k;
    const float* x;
    uint32_t r;
    bool siblings;
    float best;  // best trained sibling's logit (siblings only)
    float w;     // trending weight (0: off)
};

__device__ __forceinline__ float prior_logit(const StepPriors& p, const Beam& b, uint32_t codes, uint32_t c) {
    const float v = b.x[c];
    return p.first ? __fadd_rn(v, p.first[(size_t)b.r * codes + c]) : v;
}

__device__ __forceinline__ bool is_new(const StepTrie& t, const StepPriors& p, const Beam& b, uint32_t i, uint32_t ch) {
    const uint32_t item = kid_item(t, b.k, i, ch);
    return item != GENREC_NONE && item >= p.trained_rows;
}

__device__ __forceinline__ float trend_lift(const StepPriors& p, uint32_t r, uint32_t node) {
    uint32_t lo = p.trend_lo[r], hi = p.trend_hi[r];
    while (lo < hi) {
        const uint32_t m = lo + (hi - lo) / 2;
        const uint32_t v = p.trend_node[m];
        if (v == node) return p.trend_lift[m];
        if (v < node) lo = m + 1; else hi = m;
    }
    return 0.f;
}

// Slot i's code, child and logit after the priors; false for no child.
__device__ __forceinline__ bool slot_logit(const StepTrie& t, const StepPriors& p, const Beam& b, uint32_t i,
                                           uint32_t* code, uint32_t* child, float* logit) {
    kid(b.k, i, code, child);
    if (*child == GENREC_NONE) return false;
    float v = prior_logit(p, b, t.codes, *code);
    if (b.siblings && isfinite(b.best) && is_new(t, p, b, i, *child)) v = fmaxf(v, b.best);
    if (b.w != 0.f) v = __fadd_rn(v, __fmul_rn(b.w, trend_lift(p, b.r, *child)));
    *logit = v;
    return true;
}

// The beam at `node`: its children and, for the new-item rule, the best
// trained sibling's logit. Called by a whole warp; every lane gets it.
__device__ __forceinline__ Beam beam_at(const StepTrie& t, const StepPriors& p, uint32_t r, const float* x,
                                        uint32_t node, uint32_t lane) {
    Beam b;
    b.k = kids_of(t, node);
    b.x = x;
    b.r = r;
    b.siblings = p.siblings && p.siblings[r] != 0;
    b.w = p.trend_w ? p.trend_w[r] : 0.f;
    b.best = -INFINITY;
    if (b.siblings) {
        float m = -INFINITY;
        for (uint32_t i = lane; i < b.k.n; i += 32) {
            uint32_t c, ch;
            kid(b.k, i, &c, &ch);
            if (ch != GENREC_NONE && !is_new(t, p, b, i, ch)) m = fmaxf(m, prior_logit(p, b, t.codes, c));
        }
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(GENREC_FULL, m, o));
        b.best = m;
    }
    return b;
}

// A beam's log-normaliser: the model's (`norm`), or a log-softmax over the
// node's valid children (their logits after the priors). Called by a whole
// warp; every lane gets it.
__device__ __forceinline__ float beam_lse(const StepTrie& t, const StepPriors& p, const Beam& b, const float* norm,
                                          uint32_t row, uint32_t lane) {
    if (norm) return norm[row];
    float m = -INFINITY;
    for (uint32_t i = lane; i < b.k.n; i += 32) {
        uint32_t c, ch;
        float v;
        if (slot_logit(t, p, b, i, &c, &ch, &v)) m = fmaxf(m, v);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(GENREC_FULL, m, o));
    float s = 0.f;
    for (uint32_t i = lane; i < b.k.n; i += 32) {
        uint32_t c, ch;
        float v;
        if (slot_logit(t, p, b, i, &c, &ch, &v)) s += expf(v - m);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(GENREC_FULL, s, o);
    return m + logf(s);
}

// Slot i of beam b (request r): whether its child may be chosen (a child,
// allowed, not banned, a finite score) and its key.
__device__ __forceinline__ bool candidate(const StepTrie& t, const StepFilters& f, const StepPriors& p, const Beam& bm,
                                          float base, float lse, uint32_t b, uint32_t i, unsigned long long* key) {
    uint32_t c, ch;
    float v;
    if (!slot_logit(t, p, bm, i, &c, &ch, &v)) return false;
    const uint32_t r = bm.r;
    if (f.allow_start) {
        const uint32_t lo = f.allow_start[r], hi = f.allow_start[r + 1];
        if (lo != hi && !sorted_contains(f.allow_nodes, lo, hi, ch)) return false;
    }
    if (f.ban_start && sorted_contains(f.ban_nodes, f.ban_start[r], f.ban_start[r + 1], ch)) return false;
    const float sc = __fsub_rn(__fadd_rn(base, v), lse);
    // non-finite scores (+inf/NaN logits or normalisers, all--inf rows) are no
    // continuation, as on the CPU
    if (!isfinite(sc)) return false;
    *key = ((unsigned long long)ord_bits(sc) << 32) | (unsigned long long)(0xFFFFFFFFu - (b * t.codes + c));
    return true;
}

// The candidates of request r whose score bits are at least `bound` (0: all)
// as keys in `out`, at slots taken from `count` (shared): one warp per beam,
// warp-aggregated slots. Slots at or past `capacity` are counted, not written.
__device__ void write_candidates(const StepTrie& t, const StepFilters& f, const StepPriors& p, uint32_t r,
                                 const float* logits, uint32_t ld, uint32_t col0, const float* norm, const float* scores,
                                 const uint32_t* nodes, uint32_t beams_in, unsigned int bound, uint32_t capacity,
                                 unsigned long long* out, unsigned int* count) {
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (uint32_t b = warp; b < beams_in; b += warps) {
        const uint32_t row = r * beams_in + b;
        const uint32_t node = nodes[row];
        const float base = scores[row];
        if (node == GENREC_NONE || !isfinite(base)) continue;
        const Beam bm = beam_at(t, p, r, logits + (size_t)row * ld + col0, node, lane);
        const uint32_t slots = bm.k.n;
        if (slots == 0) continue;
        const float lse = beam_lse(t, p, bm, norm, row, lane);
        for (uint32_t i0 = 0; i0 < slots; i0 += 32) {
            const uint32_t i = i0 + lane;
            unsigned long long key = 0;
            const bool ok = i < slots && candidate(t, f, p, bm, base, lse, b, i, &key) && (unsigned int)(key >> 32) >= bound;
            const unsigned vote = __ballot_sync(GENREC_FULL, ok);
            unsigned first = 0;
            if (lane == 0 && vote) first = atomicAdd(count, __popc(vote));
            first = __shfl_sync(GENREC_FULL, first, 0);
            const unsigned slot = first + __popc(vote & ((1u << lane) - 1u));
            if (ok && slot < capacity) out[slot] = key;
        }
    }
}

// Warp 0's search for the digit of the want-th largest key (1-based) in a
// pass's histogram, and how many keys lie in higher digits: lane l sums the
// digits 255-8l down to 248-8l, a scan over the lanes finds the first whose
// running sum reaches `want`, and that lane walks its eight digits. Digit 0
// when even that is not reached (`pick_digit` in mirror.rs, tested against
// the serial walk).
__device__ void pick_digit(const unsigned int* hist, unsigned int want, uint32_t lane, unsigned int* digit, unsigned int* above) {
    unsigned int sum = 0;
    for (uint32_t j = 0; j < 8; ++j) sum += hist[255 - 8 * lane - j];
    unsigned int incl = sum;
    for (uint32_t o = 1; o < 32; o <<= 1) {
        const unsigned int v = __shfl_up_sync(GENREC_FULL, incl, o);
        if (lane >= o) incl += v;
    }
    const unsigned int hit = __ballot_sync(GENREC_FULL, incl >= want);
    if (hit == 0) {
        if (lane == 31) { *digit = 0; *above = incl - hist[0]; }
        return;
    }
    if (lane == (uint32_t)(__ffs(hit) - 1)) {
        unsigned int acc = incl - sum, d = 0;
        for (uint32_t j = 0; j < 8; ++j) {
            d = 255 - 8 * lane - j;
            if (d == 0 || acc + hist[d] >= want) break;
            acc += hist[d];
        }
        *digit = d;
        *above = acc;
    }
}

// The k-th largest (1-based, repeats counted) of n keys whose low `bits` are
// significant: one 8-bit digit per pass, most significant first. Called by
// the whole block; every thread gets it.
template <typename K>
__device__ unsigned long long radix_kth(const K* keys, uint32_t n, uint32_t k, int bits) {
    __shared__ unsigned int s_hist[256];
    __shared__ unsigned long long s_prefix, s_mask;
    __shared__ unsigned int s_remaining, s_digit, s_above;
    const uint32_t tid = threadIdx.x;
    if (tid == 0) { s_prefix = 0; s_mask = 0; s_remaining = k; }
    for (int shift = bits - 8; shift >= 0; shift -= 8) {
        for (uint32_t i = tid; i < 256; i += blockDim.x) s_hist[i] = 0;
        __syncthreads();
        const unsigned long long prefix = s_prefix, mask = s_mask;
        for (uint32_t i = tid; i < n; i += blockDim.x) {
            const unsigned long long key = keys[i];
            if ((key & mask) == prefix) atomicAdd(&s_hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid < 32) pick_digit(s_hist, s_remaining, tid, &s_digit, &s_above);
        __syncthreads();
        if (tid == 0) {
            s_remaining -= s_above;
            s_prefix |= (unsigned long long)s_digit << shift;
            s_mask |= 255ull << shift;
        }
        __syncthreads();
    }
    const unsigned long long out = s_prefix;
    __syncthreads();
    return out;
}

// Sorts a[0..p) descending in shared memory (p a power of two). Whole block.
__device__ void bitonic_desc(unsigned long long* a, uint32_t p) {
    for (uint32_t size = 2; size <= p; size <<= 1) {
        for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
            for (uint32_t i = threadIdx.x; i < p; i += blockDim.x) {
                const uint32_t j = i ^ stride;
                if (j > i) {
                    const unsigned long long x = a[i], y = a[j];
                    const bool down = (i & size) == 0;
                    if (down ? x < y : x > y) { a[i] = y; a[j] = x; }
                }
            }
            __syncthreads();
        }
    }
}

__device__ __forceinline__ uint32_t pow2_at_least(uint32_t k) {
    uint32_t p = 1;
    while (p < k) p <<= 1;
    return p;
}

// The k keys of cands[0..n) at or above `threshold` (the k-th largest), into
// sel[0..k) best first. Whole block.
__device__ void gather_sorted(const unsigned long long* cands, uint32_t n, unsigned long long threshold, uint32_t k,
                              unsigned long long* sel) {
    __shared__ unsigned int s_picked;
    const uint32_t p = pow2_at_least(k);
    for (uint32_t i = threadIdx.x; i < p; i += blockDim.x) sel[i] = 0;
    if (threadIdx.x == 0) s_picked = 0;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        const unsigned long long key = cands[i];
        if (key >= threshold) sel[atomicAdd(&s_picked, 1u)] = key;
    }
    __syncthreads();
    bitonic_desc(sel, p);
}

// Decodes request r's k best keys (sel, best first) into the step's outputs;
// slots past k are dead beams.
__device__ void write_outputs(const StepTrie& t, uint32_t r, const unsigned long long* sel, uint32_t k,
                              const uint32_t* nodes, uint32_t beams_in, uint32_t beams_out, uint32_t token_offset,
                              uint32_t pad_token, uint32_t* out_parent, uint32_t* out_code, uint32_t* out_node,
                              float* out_score, uint32_t* out_row, uint32_t* out_token) {
    for (uint32_t j = threadIdx.x; j < beams_out; j += blockDim.x) {
        const uint32_t slot = r * beams_out + j;
        if (j < k) {
            const unsigned long long key = sel[j];
            const uint32_t idx = 0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFull);
            const uint32_t parent = idx / t.codes, code = idx % t.codes;
            const uint32_t pn = nodes[r * beams_in + parent];
            const uint32_t child = kid_along(kids_of(t, pn), code);
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

// slot[idx[i]] = val[i] for i < n: a sync's few changed patch slots
// (src/generate/kernel/patch.rs), without re-uploading the slot array.
extern "C" __global__ void genrec_set_slots(uint32_t* __restrict__ slot, const uint32_t* __restrict__ idx,
                                            const uint32_t* __restrict__ val, uint32_t n) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) slot[idx[i]] = val[i];
}

// Does nothing: `genrec gpu-check` times it as the launch-and-sync floor.
extern "C" __global__ void genrec_noop() {}

// One thread block per request; candidates through a global scratch buffer
// ([R, beams_in*codes] keys) and a radix select over all of them.
extern "C" __global__ void genrec_beam_step(
    const float* __restrict__ logits, uint32_t ld, uint32_t col0,   // row r*beams_in+b at logits[row*ld + col0 + code]
    const float* __restrict__ norm,                                  // [R*beams_in] or null
    const float* __restrict__ scores, const uint32_t* __restrict__ nodes,
    const uint32_t* __restrict__ child_start, const uint32_t* __restrict__ child_code,
    const uint32_t* __restrict__ dense, uint32_t dense_base,         // dense table of this depth, or null (CSR)
    const uint32_t* __restrict__ patch_slot, uint32_t patch_nodes,   // the overlay (StepTrie), or null
    const uint32_t* __restrict__ patch_code, const uint32_t* __restrict__ patch_node, const uint32_t* __restrict__ patch_item,
    const uint32_t* __restrict__ leaf_item, uint32_t leaves_start, uint32_t base_nodes,
    const uint32_t* __restrict__ allow_start, const uint32_t* __restrict__ allow_nodes,  // per request, sorted; empty = all; null = none
    const uint32_t* __restrict__ ban_start, const uint32_t* __restrict__ ban_nodes,      // per request, sorted; null = none
    const float* __restrict__ first, const uint32_t* __restrict__ siblings, uint32_t trained_rows,  // StepPriors; null = none
    const float* __restrict__ trend_w, const uint32_t* __restrict__ trend_lo, const uint32_t* __restrict__ trend_hi,
    const uint32_t* __restrict__ trend_node, const float* __restrict__ trend_lift,
    uint32_t beams_in, uint32_t beams_out, uint32_t codes,
    uint32_t token_offset, uint32_t pad_token,
    unsigned long long* __restrict__ scratch,                        // [R, beams_in*codes]
    uint32_t* __restrict__ out_parent, uint32_t* __restrict__ out_code, uint32_t* __restrict__ out_node,
    float* __restrict__ out_score, uint32_t* __restrict__ out_row, uint32_t* __restrict__ out_token) {
    __shared__ unsigned int s_count;
    __shared__ unsigned long long s_sel[GENREC_MAX_BEAMS];
    const StepTrie t{child_start, child_code, dense, dense_base, codes, patch_slot, patch_nodes,
                     patch_code, patch_node, patch_item, leaf_item, leaves_start, base_nodes};
    const StepFilters f{allow_start, allow_nodes, ban_start, ban_nodes};
    const StepPriors p{first, siblings, trained_rows, trend_w, trend_lo, trend_hi, trend_node, trend_lift};
    const uint32_t r = blockIdx.x;
    unsigned long long* cands = scratch + (size_t)r * beams_in * codes;
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    // Phases 1-3: normalisers and keys
    write_candidates(t, f, p, r, logits, ld, col0, norm, scores, nodes, beams_in, 0u, GENREC_NONE, cands, &s_count);
    __syncthreads();
    const uint32_t n = s_count;
    const uint32_t k = n < beams_out ? n : beams_out;
    // Phase 4: the k-th largest key, then the k best sorted in shared memory
    const unsigned long long threshold = n > beams_out ? radix_kth(cands, n, beams_out, 64) : 0ull;
    gather_sorted(cands, n, threshold, k, s_sel);
    // Phase 5: the step's outputs
    write_outputs(t, r, s_sel, k, nodes, beams_in, beams_out, token_offset, pad_token,
                  out_parent, out_code, out_node, out_score, out_row, out_token);
}

// The same step with the pooled selection: the arguments of genrec_beam_step
// plus `capacity` (pool size, 1..GENREC_POOL_MAX) and `stride` (scratch keys
// per request: at least beams_in*codes, and beams_in*16 for the lanes' best
// scores).
extern "C" __global__ void genrec_beam_step_pool(
    const float* __restrict__ logits, uint32_t ld, uint32_t col0,
    const float* __restrict__ norm,
    const float* __restrict__ scores, const uint32_t* __restrict__ nodes,
    const uint32_t* __restrict__ child_start, const uint32_t* __restrict__ child_code,
    const uint32_t* __restrict__ dense, uint32_t dense_base,
    const uint32_t* __restrict__ patch_slot, uint32_t patch_nodes,
    const uint32_t* __restrict__ patch_code, const uint32_t* __restrict__ patch_node, const uint32_t* __restrict__ patch_item,
    const uint32_t* __restrict__ leaf_item, uint32_t leaves_start, uint32_t base_nodes,
    const uint32_t* __restrict__ allow_start, const uint32_t* __restrict__ allow_nodes,
    const uint32_t* __restrict__ ban_start, const uint32_t* __restrict__ ban_nodes,
    const float* __restrict__ first, const uint32_t* __restrict__ siblings, uint32_t trained_rows,
    const float* __restrict__ trend_w, const uint32_t* __restrict__ trend_lo, const uint32_t* __restrict__ trend_hi,
    const uint32_t* __restrict__ trend_node, const float* __restrict__ trend_lift,
    uint32_t beams_in, uint32_t beams_out, uint32_t codes,
    uint32_t token_offset, uint32_t pad_token,
    unsigned long long* __restrict__ scratch, uint32_t capacity, unsigned long long stride,
    uint32_t* __restrict__ out_parent, uint32_t* __restrict__ out_code, uint32_t* __restrict__ out_node,
    float* __restrict__ out_score, uint32_t* __restrict__ out_row, uint32_t* __restrict__ out_token) {
    __shared__ unsigned int s_count;
    __shared__ unsigned long long s_pool[GENREC_POOL_MAX];
    const StepTrie t{child_start, child_code, dense, dense_base, codes, patch_slot, patch_nodes,
                     patch_code, patch_node, patch_item, leaf_item, leaves_start, base_nodes};
    const StepFilters f{allow_start, allow_nodes, ban_start, ban_nodes};
    const StepPriors p{first, siblings, trained_rows, trend_w, trend_lo, trend_hi, trend_node, trend_lift};
    const uint32_t r = blockIdx.x;
    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    unsigned long long* cands = scratch + (size_t)r * stride;
    uint32_t* lane_best = reinterpret_cast<uint32_t*>(cands);  // [beams_in * 32], before the fallback's keys

    // Pass 1: each lane's best candidate score per beam (ord bits; 0: none)
    for (uint32_t b = warp; b < beams_in; b += warps) {
        const uint32_t row = r * beams_in + b;
        const uint32_t node = nodes[row];
        const float base = scores[row];
        unsigned int best = 0;
        if (node != GENREC_NONE && isfinite(base)) {
            const Beam bm = beam_at(t, p, r, logits + (size_t)row * ld + col0, node, lane);
            if (bm.k.n > 0) {
                const float lse = beam_lse(t, p, bm, norm, row, lane);
                for (uint32_t i = lane; i < bm.k.n; i += 32) {
                    unsigned long long key;
                    if (candidate(t, f, p, bm, base, lse, b, i, &key)) best = max(best, (unsigned int)(key >> 32));
                }
            }
        }
        lane_best[b * 32 + lane] = best;
    }
    __syncthreads();
    // The lanes' best are distinct candidates: at least beams_out candidates
    // score at or above their beams_out-th largest
    const uint32_t m = beams_in * 32;
    const unsigned int bound = m >= beams_out ? (unsigned int)radix_kth(lane_best, m, beams_out, 32) : 0u;

    // Pass 2: the candidates at or above the bound into the pool
    if (tid == 0) s_count = 0;
    __syncthreads();
    write_candidates(t, f, p, r, logits, ld, col0, norm, scores, nodes, beams_in, bound, capacity, s_pool, &s_count);
    __syncthreads();
    const uint32_t n = s_count;
    uint32_t k;
    if (n <= capacity) {
        // the pool holds every candidate that can be chosen: sort it
        k = n < beams_out ? n : beams_out;
        const uint32_t p = pow2_at_least(n);
        for (uint32_t i = n + tid; i < p; i += blockDim.x) s_pool[i] = 0;
        __syncthreads();
        bitonic_desc(s_pool, p);
    } else {
        // too many survivors: every candidate to the scratch, radix select
        __syncthreads();
        if (tid == 0) s_count = 0;
        __syncthreads();
        write_candidates(t, f, p, r, logits, ld, col0, norm, scores, nodes, beams_in, 0u, GENREC_NONE, cands, &s_count);
        __syncthreads();
        const uint32_t all = s_count;
        k = all < beams_out ? all : beams_out;
        const unsigned long long threshold = all > beams_out ? radix_kth(cands, all, beams_out, 64) : 0ull;
        gather_sorted(cands, all, threshold, k, s_pool);
    }
    write_outputs(t, r, s_pool, k, nodes, beams_in, beams_out, token_offset, pad_token,
                  out_parent, out_code, out_node, out_score, out_row, out_token);
}
