/* balance.h - charge/spin balancing of the l = 0 channels (model-spec section 8), the part
 * every backend shares: which channels, their targets, the system-wide sums (over all
 * processes when several share the system, umas_system.sum_over_processes) and the CPU's
 * float64 forward and backward. Internal.
 *
 * Forward, after every block, on h [N][9][C] (energy nodes [0, Ne): this process's atoms, each
 * atom of the system an energy node of exactly one process; the others are ghost copies):
 *     sum_k  = sum over the energy nodes of every process of h[n][0][c_k]
 *     h[n][0][c_k] -= (sum_k - target_k) / atoms                     every node n in [0, N)
 * Backward, on dh = dE/d(block output), the adjoint of that map:
 *     sum_k  = sum over every node of every process of dh[n][0][c_k]
 *     dh[n][0][c_k] -= sum_k / atoms                                 energy nodes only
 * A ghost copy is shifted like its atom, but only its atom's own value enters the sum, so only
 * energy nodes carry the sum's adjoint. One process without ghosts: fairchem's balance_channels.
 */
#ifndef UMAS_BALANCE_H
#define UMAS_BALANCE_H

#include "umas.h"

typedef struct umas_context umas_context;

typedef struct umas_balance {
    int count;      /* balanced channels, charge ones then spin ones; 0: the model has none */
    int *channel;   /* [count] channel index c_k */
    double *target; /* [count] the system's charge, or its spin multiplicity - 1 */
} umas_balance;

/* The model's balanced channels with the system's targets. Fails on a channel listed twice
 * (a model whose balancing is not defined: refused rather than guessed). */
int umas_balance_init(umas_balance *b, const int *charge_channels, int num_charge,
                      const int *spin_channels, int num_spin, int charge, int spin,
                      umas_error *err);
void umas_balance_free(umas_balance *b);

/* values[count] summed over every process sharing the system (in place; nothing with one). */
void umas_sum_over_processes(const umas_context *ctx, double *values, int count);

/* Before a compute of a balanced model (collective): the processes' energy nodes must add up
 * to the system's atoms, or the sums would be wrong; says so when they do not. */
int umas_balance_check_atoms(const umas_context *ctx, int energy_nodes, umas_error *err);

/* The CPU float64 forward and backward of the header's comment, h and dh [nodes][9][C]. */
void umas_balance_forward(const umas_context *ctx, double *h, int nodes, int energy_nodes, int C);
void umas_balance_backward(const umas_context *ctx, double *dh, int nodes, int energy_nodes, int C);

#endif
