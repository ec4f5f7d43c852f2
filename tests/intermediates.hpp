// intermediates.hpp - node features after each stage of a forward pass (the context's trace,
// an internal of the core) against fairchem's intermediates of a reference case.
#ifndef UMAS_TESTS_INTERMEDIATES_HPP
#define UMAS_TESTS_INTERMEDIATES_HPP

#include "reference.hpp"

extern "C" {
#include "context.h"
}

#include <cstdio>
#include <string>
#include <vector>

// Relative max error of the node features after each stage (intermediate_stages) of a context's
// trace against fairchem's intermediates of the case: one value per stage, printed with `label`.
inline std::vector<double> intermediate_errors(Evaluation &ev, const ReferenceCase &c,
                                               const std::string &label) {
    ev.ctx->keep_trace = 1;
    ev.energy(c.atomic_numbers, nullptr);
    std::vector<std::string> stages = intermediate_stages(ev.ctx->weights.num_layers);
    size_t size = (size_t)c.num_atoms * 9 * ev.ctx->weights.C;
    std::vector<double> errors;
    for (size_t s = 0; s < stages.size(); s++) {
        NpyArray ref = npy_load(c.file("intermediates/" + stages[s] + ".npy"));
        EXPECT_EQ(ref.size(), size) << stages[s];
        errors.push_back(
            max_abs_diff(ev.ctx->trace + s * size, ref.values.data(), std::min(size, ref.size())) /
            max_abs(ref.values));
        std::printf("[ measured ] %s %s: relative max error %.2e\n", label.c_str(),
                    stages[s].c_str(), errors.back());
    }
    return errors;
}

#endif
