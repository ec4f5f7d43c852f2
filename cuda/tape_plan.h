/* tape_plan.h - how umas_fast_gpu spends GPU memory on a step, as pure host arithmetic (no CUDA:
 * tested on the CPU, tests/test_tape_plan.cpp). Internal to cuda/.
 *
 * The backward of a block needs the block's edge activations (its "tape": radial MLP LayerNorm
 * inputs and output, conv1's gate inputs and pre-gate output, conv2's messages). A block either
 * keeps its tape over all edges from the forward, or recomputes it chunk by chunk in the
 * backward into tapes[0], which is one chunk long (all edges long when every block keeps).
 * Choices, best first (plan_tapes):
 *   kept_blocks  the last kept_blocks blocks keep their tapes: L, L - 1, ..., 0
 *   keep_radial  the kept tapes hold the radial MLP output too (else the blocks share tapes[0]'s
 *                and the backward runs the MLP's last layer again: 6 KB less per edge and block
 *                for UMA-S, +4 % of the GEMM work)
 *   chunk        edges per chunk: all E, 4 x, then 1 x the ~1 GB recompute chunk
 * Every choice whose estimated bytes fit the budget is a candidate, in that order; recomputing
 * every block in the smallest chunks is the last resort, always listed whatever the estimate
 * (the allocation itself then says whether it fits). */
#ifndef UMAS_CUDA_TAPE_PLAN_H
#define UMAS_CUDA_TAPE_PLAN_H

#include <cstddef>
#include <vector>

namespace umas_cuda {

/* What the estimate needs, in floats per edge. */
struct tape_plan_input {
    size_t edges = 0;           /* E (> 0) */
    int blocks = 0;             /* L */
    size_t recompute_chunk = 0; /* edges of the ~1 GB chunk */
    double budget_bytes = 0;    /* what the tapes and scratch may take */
    size_t block0_tape = 0;     /* tapes[0]: every buffer, the radial output included */
    size_t kept_tape = 0;       /* a kept tape of block l > 0, with the radial output */
    size_t radial = 0;          /* the radial output, dropped from kept tapes without it */
    size_t scratch = 0;         /* per-chunk scratch besides the tapes */
    size_t per_edge = 0;        /* held for all edges whatever the choice (umas_fast: L Ce) */
};

struct tape_choice {
    int kept_blocks = 0;
    bool keep_radial = true;
    size_t chunk = 0;
    double bytes = 0;         /* tape_bytes of this choice */
    bool last_resort = false; /* listed although the estimate exceeds the budget */
};

/* Floats per edge of block l's tape under a choice (l = 0: tapes[0]). */
size_t tape_floats(const tape_plan_input &in, int l, int kept_blocks, bool keep_radial);

/* Bytes of the tapes and the scratch of a choice: kept tapes over all edges, tapes[0] over a
 * chunk (all edges when every block keeps), the scratch over a chunk (the estimate: the per-edge
 * geometry and the node arrays are left out). */
double tape_bytes(const tape_plan_input &in, int kept_blocks, bool keep_radial, size_t chunk);

/* The candidate choices, best first (the header's comment). Never empty for edges > 0. */
std::vector<tape_choice> plan_tapes(const tape_plan_input &in);

} // namespace umas_cuda

#endif
