/* tape_plan.cpp - umas_fast_gpu's memory plan as pure host arithmetic (tape_plan.h). */
#include "tape_plan.h"

#include <algorithm>

namespace umas_cuda {

size_t tape_floats(const tape_plan_input &in, int l, int kept_blocks, bool keep_radial) {
    if (l == 0)
        return in.block0_tape;
    bool kept = l >= in.blocks - kept_blocks;
    return in.kept_tape - (kept && !keep_radial ? in.radial : 0);
}

double tape_bytes(const tape_plan_input &in, int kept_blocks, bool keep_radial, size_t chunk) {
    double floats = (double)chunk * in.scratch + (double)in.edges * in.per_edge;
    for (int l = 0; l < in.blocks; l++) {
        bool kept = l >= in.blocks - kept_blocks;
        if (l > 0 && !kept)
            continue; /* recomputes into tapes[0] */
        bool all_edges = l > 0 || kept_blocks == in.blocks;
        floats += (double)(all_edges ? in.edges : chunk) *
                  (double)tape_floats(in, l, kept_blocks, keep_radial);
    }
    return floats * sizeof(float);
}

std::vector<tape_choice> plan_tapes(const tape_plan_input &in) {
    const size_t E = in.edges, rc = in.recompute_chunk;
    const size_t chunks[3] = {E, std::min(E, 4 * rc), std::min(E, rc)};
    std::vector<tape_choice> candidates;
    for (int k = in.blocks; k >= 0; k--)
        for (bool keep_radial : {true, false}) {
            if (!keep_radial && k == 0)
                continue; /* nothing kept: the same choice as with */
            for (int c = 0; c < 3; c++) {
                if (c > 0 && chunks[c] == chunks[c - 1])
                    continue;
                tape_choice choice;
                choice.kept_blocks = k;
                choice.keep_radial = keep_radial;
                choice.chunk = chunks[c];
                choice.bytes = tape_bytes(in, k, keep_radial, chunks[c]);
                choice.last_resort = k == 0 && chunks[c] == chunks[2];
                if (choice.bytes <= in.budget_bytes || choice.last_resort)
                    candidates.push_back(choice);
            }
        }
    return candidates;
}

} // namespace umas_cuda
