/* balance.c - charge/spin balancing of the l = 0 channels (balance.h, model-spec section 8). */
#include "balance.h"

#include "context.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

int umas_balance_init(umas_balance *b, const int *charge_channels, int num_charge,
                      const int *spin_channels, int num_spin, int charge, int spin,
                      umas_error *err) {
    memset(b, 0, sizeof *b);
    int count = num_charge + num_spin;
    if (count == 0)
        return 0;
    b->channel = malloc(sizeof(int) * (size_t)count);
    b->target = malloc(sizeof(double) * (size_t)count);
    if (!b->channel || !b->target) {
        umas_balance_free(b);
        return umas_fail(err, "out of memory");
    }
    for (int k = 0; k < count; k++) {
        int charge_channel = k < num_charge;
        b->channel[k] = charge_channel ? charge_channels[k] : spin_channels[k - num_charge];
        b->target[k] = charge_channel ? (double)charge : (double)spin - 1.0;
        for (int j = 0; j < k; j++)
            if (b->channel[j] == b->channel[k]) {
                int channel = b->channel[k];
                umas_balance_free(b);
                return umas_fail(err,
                                 "unsupported model: channel %d is balanced twice (listed twice "
                                 "in charge_balanced_channels / spin_balanced_channels)",
                                 channel);
            }
    }
    b->count = count;
    return 0;
}

void umas_balance_free(umas_balance *b) {
    free(b->channel);
    free(b->target);
    memset(b, 0, sizeof *b);
}

void umas_sum_over_processes(const umas_context *ctx, double *values, int count) {
    if (ctx->sum_over_processes)
        ctx->sum_over_processes(values, count, ctx->sum_data);
}

int umas_balance_check_atoms(const umas_context *ctx, int energy_nodes, umas_error *err) {
    if (ctx->balance.count == 0)
        return 0;
    double atoms = energy_nodes;
    umas_sum_over_processes(ctx, &atoms, 1);
    if (atoms != (double)ctx->num_atoms)
        return umas_fail(err,
                         "this model balances charge/spin channels over the whole system of %d "
                         "atoms, but the graph%s %.0f energy nodes: every atom must be an "
                         "energy node of exactly one process (umas_system.sum_over_processes "
                         "for several)",
                         ctx->num_atoms,
                         ctx->sum_over_processes ? "s of all processes hold" : " holds", atoms);
    return 0;
}

enum { MAX_SUMS = 64 }; /* sums per call; more balanced channels go in several rounds */

/* sums[k] over nodes [0, summed) of x[n][0][c_k], for the channels [first, first + n). */
static void channel_sums(const umas_balance *b, int first, int n, const double *x, int summed,
                         int C, double *sums) {
    for (int k = 0; k < n; k++) {
        double sum = 0;
        for (int node = 0; node < summed; node++)
            sum += x[(size_t)node * 9 * C + b->channel[first + k]];
        sums[k] = sum;
    }
}

/* x[n][0][c_k] -= shift_k over nodes [0, shifted) with shift_k = (sum_k - target_k) / atoms,
 * the sums over nodes [0, summed) of every process; targets only in the forward. */
static void balance(const umas_context *ctx, double *x, int summed, int shifted, int C,
                    int with_targets) {
    const umas_balance *b = &ctx->balance;
    for (int first = 0; first < b->count; first += MAX_SUMS) {
        int n = b->count - first < MAX_SUMS ? b->count - first : MAX_SUMS;
        double sums[MAX_SUMS];
        channel_sums(b, first, n, x, summed, C, sums);
        umas_sum_over_processes(ctx, sums, n);
        for (int k = 0; k < n; k++) {
            double shift = (sums[k] - (with_targets ? b->target[first + k] : 0.0)) / ctx->num_atoms;
            for (int node = 0; node < shifted; node++)
                x[(size_t)node * 9 * C + b->channel[first + k]] -= shift;
        }
    }
}

void umas_balance_forward(const umas_context *ctx, double *h, int nodes, int energy_nodes, int C) {
    balance(ctx, h, energy_nodes, nodes, C, 1);
}

void umas_balance_backward(const umas_context *ctx, double *dh, int nodes, int energy_nodes,
                           int C) {
    balance(ctx, dh, nodes, energy_nodes, C, 0);
}
