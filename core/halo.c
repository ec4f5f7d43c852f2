/* halo.c - the halo exchange around every block (halo.h). */
#include "halo.h"

#include "context.h"

#include <string.h>

int umas_has_halo(const umas_context *ctx) {
    return ctx->refresh_ghosts != NULL;
}

void umas_halo_refresh(const umas_context *ctx, double *rows, int nodes, int width) {
    if (ctx->refresh_ghosts)
        ctx->refresh_ghosts(rows, nodes, width, ctx->halo_data);
}

void umas_halo_sum_into_owners(const umas_context *ctx, double *rows, int nodes, int energy_nodes,
                               int width) {
    if (!ctx->sum_into_owners)
        return;
    ctx->sum_into_owners(rows, nodes, width, ctx->halo_data);
    if (nodes > energy_nodes)
        memset(rows + (size_t)energy_nodes * width, 0,
               sizeof(double) * (size_t)(nodes - energy_nodes) * width);
}
