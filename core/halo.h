/* halo.h - the halo exchange of umas_system (refresh_ghosts, sum_into_owners): what the CPU
 * driver and the GPU backends call around every block when the processes that share a system
 * each hold a ghost shell of one cutoff. Internal.
 *
 * Forward, before block l's messages, on h [N][9][C]:
 *     h[ghost] = h[its atom]                   (refresh_ghosts: the atom's process sends it)
 * Backward, after block l's backward, on dh = dE/d(block l's input) [N][9][C], the adjoint:
 *     dh[its atom] += dh[ghost];  dh[ghost] = 0       (sum_into_owners, then zeroed here)
 * The messages of block l reach only energy nodes (the graph has only their incoming edges), so
 * a ghost row is stale after every block until the next refresh; its adjoint is zero until the
 * block that reads it, and whatever the node layers compute on stale rows never reaches an
 * energy. Every process calls these the same number of times (collective). */
#ifndef UMAS_HALO_H
#define UMAS_HALO_H

typedef struct umas_context umas_context;

/* Whether this context exchanges halos (umas_system.refresh_ghosts was set). */
int umas_has_halo(const umas_context *ctx);

/* rows [nodes][width]: ghost rows (nodes [energy_nodes, nodes)) from their atoms. Nothing
 * without a halo. */
void umas_halo_refresh(const umas_context *ctx, double *rows, int nodes, int width);

/* rows [nodes][width]: ghost rows added into their atoms' rows, then zeroed. Nothing without a
 * halo. */
void umas_halo_sum_into_owners(const umas_context *ctx, double *rows, int nodes, int energy_nodes,
                               int width);

#endif
