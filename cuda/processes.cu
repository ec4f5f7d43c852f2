/* processes.cu - what the GPU backends exchange with the other processes that share a system,
 * around every block: the charge/spin balancing's sums (core/balance.h) and the halo exchange of
 * node features (core/halo.h). Both go through the host: copy down, wait, the caller's function
 * (MPI in LAMMPS), copy up. */
#include "cuda_internal.h"

extern "C" {
#include "halo.h"
}

namespace umas_cuda {

bool balance_on_host(const umas_context *ctx) {
    return ctx->balance.count > 0 && ctx->sum_over_processes;
}

bool step_waits_for_processes(const umas_context *ctx) {
    return balance_on_host(ctx) || umas_has_halo(ctx);
}

void balance_block(umas_context *ctx, cuda_state *s, const graph_view &g, float *x, bool backward) {
    const umas_balance &b = ctx->balance;
    if (b.count == 0)
        return;
    int C = ctx->weights.C;
    cu_balance_sums(backward ? g.N : g.energy_nodes, C, b.count, s->balance_channel, x,
                    s->balance_sums, s->stream);
    if (balance_on_host(ctx)) {
        double *host = s->host_sums.data();
        cudaMemcpyAsync(host, s->balance_sums, sizeof(double) * b.count, cudaMemcpyDeviceToHost,
                        s->stream);
        cudaStreamSynchronize(s->stream);
        umas_sum_over_processes(ctx, host, b.count);
        cudaMemcpyAsync(s->balance_sums, host, sizeof(double) * b.count, cudaMemcpyHostToDevice,
                        s->stream);
    }
    cu_balance_shift(backward ? g.energy_nodes : g.N, C, b.count, s->balance_channel,
                     s->balance_sums, backward ? nullptr : s->balance_target, ctx->num_atoms, x,
                     s->stream);
}

/* rows [first, first + count) of x [N][width] (device, fp32) into s->host_halo as doubles */
static void download_rows(cuda_state *s, const float *x, int first, int count, int width) {
    size_t n = (size_t)count * width, offset = (size_t)first * width;
    if (n == 0)
        return;
    s->host_halo_rows.resize(n);
    cudaMemcpyAsync(s->host_halo_rows.data(), x + offset, sizeof(float) * n, cudaMemcpyDeviceToHost,
                    s->stream);
    cudaStreamSynchronize(s->stream);
    for (size_t k = 0; k < n; k++)
        s->host_halo[offset + k] = s->host_halo_rows[k];
}

/* rows [first, first + count) of s->host_halo, rounded to fp32, into x [N][width] (device) */
static void upload_rows(cuda_state *s, float *x, int first, int count, int width) {
    size_t n = (size_t)count * width, offset = (size_t)first * width;
    if (n == 0)
        return;
    s->host_halo_rows.resize(n);
    for (size_t k = 0; k < n; k++)
        s->host_halo_rows[k] = (float)s->host_halo[offset + k];
    /* pageable memory: the call returns once the rows are staged, so host_halo_rows may change */
    cudaMemcpyAsync(x + offset, s->host_halo_rows.data(), sizeof(float) * n, cudaMemcpyHostToDevice,
                    s->stream);
}

/* The ghost rows of x [N][9][C] from their atoms: the energy nodes' rows go down, the ghosts'
 * come back. Every process calls it, also with N = 0 (collective). */
void halo_refresh(umas_context *ctx, cuda_state *s, const graph_view &g, float *x) {
    if (!umas_has_halo(ctx))
        return;
    int width = 9 * ctx->weights.C;
    s->host_halo.resize((size_t)g.N * width); /* the ghost rows are written by the callback */
    download_rows(s, x, 0, g.energy_nodes, width);
    umas_halo_refresh(ctx, s->host_halo.data(), g.N, width);
    upload_rows(s, x, g.energy_nodes, g.N - g.energy_nodes, width);
}

/* The adjoints of the ghost rows of dx [N][9][C] added into their atoms' rows, the ghost rows
 * zeroed: every row goes down and comes back. Collective. */
void halo_sum_into_owners(umas_context *ctx, cuda_state *s, const graph_view &g, float *dx) {
    if (!umas_has_halo(ctx))
        return;
    int width = 9 * ctx->weights.C;
    s->host_halo.resize((size_t)g.N * width); /* every row is downloaded */
    download_rows(s, dx, 0, g.N, width);
    umas_halo_sum_into_owners(ctx, s->host_halo.data(), g.N, g.energy_nodes, width);
    upload_rows(s, dx, 0, g.N, width);
}

} // namespace umas_cuda
