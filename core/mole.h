/* mole.h - a context's dense weights: system embedding, MoLE routing and expert merge. */
#ifndef UMAS_MOLE_H
#define UMAS_MOLE_H

#include "model.h"
#include "weights.h"

/* Builds *w for one system: task, charge, spin and composition (counts[max_num_elements], atoms
 * per atomic number, summing to num_atoms). Writes the expert coefficients [K] and the routing
 * MLP input [2C] = [composition embedding mean; c_sys]. Inputs must be validated by the caller. */
int umas_merge(const umas_model *model, const umas_task *task, int charge, int spin,
               const int *counts, int num_atoms, umas_weights *w, double *coefficients,
               double *routing_input, umas_error *err);

#endif
