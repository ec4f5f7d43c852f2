// test_tape_plan.cpp - umas_fast_gpu's memory plan (cuda/tape_plan.h), pure host arithmetic: runs
// on every machine, with or without a GPU.
//
// Specification:
//  * the bytes of a choice count the kept tapes over all edges, tapes[0] over a chunk (over all
//    edges when every block keeps), the per-chunk scratch and the per-edge arrays; a tape without
//    its radial output is that much smaller;
//  * with room for everything the first candidate keeps every block with its radial outputs in one
//    chunk of all edges;
//  * candidates are ordered: more kept blocks first, then with radial outputs before without,
//    then larger chunks first; no choice is listed twice; nothing kept is never "without radial";
//  * every candidate fits the budget except the last resort (nothing kept, smallest chunk), which
//    is always listed, so a plan is never empty;
//  * a tighter budget never gives a better first choice.
#include "tape_plan.h"

#include <gtest/gtest.h>

#include <set>
#include <tuple>

namespace {

using umas_cuda::plan_tapes;
using umas_cuda::tape_bytes;
using umas_cuda::tape_choice;
using umas_cuda::tape_plan_input;

// UMA-S's sizes in floats per edge (C = H = Ce = 128, umas_fast: unified first radial layer).
tape_plan_input uma_s(size_t edges, double budget_bytes) {
    const size_t C = 128, H = 128, Ce = 128, L = 4;
    tape_plan_input in;
    in.edges = edges;
    in.blocks = (int)L;
    in.recompute_chunk = 22548;
    in.budget_bytes = budget_bytes;
    in.block0_tape = Ce + Ce + 12 * C + 2 * H + 9 * H + 9 * C;
    in.kept_tape = Ce + 12 * C + 2 * H + 9 * H + 9 * C;
    in.radial = 12 * C;
    in.scratch = 3000;
    in.per_edge = L * Ce;
    return in;
}

// A rank of a choice, smaller is better: kept blocks descending, radial first, chunk descending.
std::tuple<int, int, double> rank(const tape_choice &c) {
    return {-c.kept_blocks, c.keep_radial ? 0 : 1, -(double)c.chunk};
}

TEST(TapeBytes, CountsKeptTapesOverAllEdgesAndTheChunkOnce) {
    tape_plan_input in = uma_s(1000000, 0);
    const double E = 1e6, chunk = 22548, f = sizeof(float);
    // nothing kept: tapes[0] and the scratch over a chunk, the per-edge arrays over all edges
    EXPECT_DOUBLE_EQ(tape_bytes(in, 0, true, 22548),
                     f * (chunk * (in.block0_tape + in.scratch) + E * in.per_edge));
    // two kept blocks (3 and 2) over all edges on top
    EXPECT_DOUBLE_EQ(tape_bytes(in, 2, true, 22548) - tape_bytes(in, 0, true, 22548),
                     f * 2 * E * in.kept_tape);
    EXPECT_DOUBLE_EQ(tape_bytes(in, 2, true, 22548) - tape_bytes(in, 2, false, 22548),
                     f * 2 * E * in.radial);
    // every block kept: tapes[0] is block 0's tape over all edges
    EXPECT_DOUBLE_EQ(
        tape_bytes(in, 4, true, 22548),
        f * (chunk * in.scratch + E * (in.per_edge + in.block0_tape + 3.0 * in.kept_tape)));
}

TEST(PlanTapes, WithRoomForEverythingEveryBlockKeepsItsTapeInOneChunk) {
    tape_plan_input in = uma_s(156000, 1e15);
    std::vector<tape_choice> plan = plan_tapes(in);
    ASSERT_FALSE(plan.empty());
    EXPECT_EQ(plan[0].kept_blocks, 4);
    EXPECT_TRUE(plan[0].keep_radial);
    EXPECT_EQ(plan[0].chunk, 156000u);
    EXPECT_FALSE(plan[0].last_resort);
}

TEST(PlanTapes, CandidatesAreOrderedDistinctAndFitExceptTheLastResort) {
    for (size_t edges : {1ul, 5000ul, 22548ul, 90000ul, 156000ul, 1248000ul, 7800000ul})
        for (double budget : {0.0, 1e9, 8e9, 30e9, 64e9, 110e9, 1e15}) {
            tape_plan_input in = uma_s(edges, budget);
            std::vector<tape_choice> plan = plan_tapes(in);
            ASSERT_FALSE(plan.empty()) << edges << " edges, budget " << budget;
            std::set<std::tuple<int, bool, size_t>> seen;
            int last_resorts = 0;
            for (size_t i = 0; i < plan.size(); i++) {
                const tape_choice &c = plan[i];
                EXPECT_TRUE(seen.insert({c.kept_blocks, c.keep_radial, c.chunk}).second)
                    << "listed twice";
                EXPECT_FALSE(c.kept_blocks == 0 && !c.keep_radial);
                EXPECT_LE(c.chunk, edges);
                EXPECT_GE(c.chunk, std::min(edges, in.recompute_chunk));
                EXPECT_DOUBLE_EQ(c.bytes, tape_bytes(in, c.kept_blocks, c.keep_radial, c.chunk));
                if (c.last_resort) {
                    last_resorts++;
                    EXPECT_EQ(c.kept_blocks, 0);
                    EXPECT_EQ(c.chunk, std::min(edges, in.recompute_chunk));
                } else {
                    EXPECT_LE(c.bytes, budget);
                }
                if (i > 0) {
                    EXPECT_LT(rank(plan[i - 1]), rank(c)) << "out of order at " << i;
                }
            }
            EXPECT_EQ(last_resorts, 1);
            EXPECT_TRUE(plan.back().last_resort);
        }
}

TEST(PlanTapes, ATighterBudgetNeverGivesABetterFirstChoice) {
    for (size_t edges : {156000ul, 1248000ul, 7800000ul}) {
        std::tuple<int, int, double> previous = rank(plan_tapes(uma_s(edges, 1e15))[0]);
        for (double budget = 1e15; budget > 1e8; budget /= 1.5) {
            std::tuple<int, int, double> first = rank(plan_tapes(uma_s(edges, budget))[0]);
            EXPECT_LE(previous, first) << edges << " edges, budget " << budget;
            previous = first;
        }
    }
}

TEST(PlanTapes, BetweenTheExtremesSomeBlocksKeepTheirTapes) {
    // 100,000 atoms of UMA-S (7.8 M edges): everything kept needs far more than an 80 GB card;
    // with 60 GB some but not all blocks keep, or all keep without radial outputs
    tape_plan_input in = uma_s(7800000, 60e9);
    tape_choice first = plan_tapes(in)[0];
    EXPECT_GT(tape_bytes(in, 4, true, in.edges), 60e9);
    EXPECT_FALSE(first.last_resort);
    EXPECT_LE(first.bytes, 60e9);
    EXPECT_TRUE(first.kept_blocks < 4 || !first.keep_radial);
}

} // namespace
