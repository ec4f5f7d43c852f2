/* backend_cuda.cu - the `general`, `umas_fast` and `umas_fast_gpu` backends on the GPU: fp32
 * storage, the same sequence of operations as core/backend_general.c (model_cuda.cu), the MoLE
 * merge on the host in float64, energies summed in float64 on the host, the per-edge geometry and
 * the final edge gradient in double on the device. This file: create, destroy and compute, the
 * neighbour-list route, and the backend tables; the other files of cuda/ are listed in
 * cuda_internal.h.
 *
 * Memory: the buffers a graph needs are grown when it needs more and reused across calls
 * (memory_plan.cu); a failed cudaMalloc reports the bytes asked for with the atom and edge
 * counts. */
#include "cuda_internal.h"

namespace umas_cuda {

/* ---------------------------------------------------------------------------------------------
 * Backend functions
 * ------------------------------------------------------------------------------------------- */

static void cuda_destroy(umas_context *ctx) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    if (!s)
        return;
    for (void *p : s->weight_memory)
        cudaFree(p);
    release_all(s, &ctx->weights);
    for (step_graph &sg : s->graphs)
        cudaGraphExecDestroy(sg.exec);
    if (s->blas)
        cublasDestroy(s->blas);
    if (s->blas_lt)
        cublasLtDestroy(s->blas_lt);
    if (s->blas_workspace)
        cudaFree(s->blas_workspace);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    delete s;
    ctx->backend_state = nullptr;
}

static int create(umas_context *ctx, bool fast, bool fused, umas_error *err) {
    const umas_weights *w = &ctx->weights;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        cudaGetLastError();
        return umas_fail(err, "device cuda: no CUDA device is visible on this machine (use "
                              "device cpu)");
    }
    cuda_state *s = new cuda_state();
    ctx->backend_state = s;
    s->fast = fast;
    s->fused = fused;
    const char *recompute = getenv("UMAS_CUDA_RECOMPUTE");
    s->forced = forced_tape_of(recompute, w->num_layers);
    const char *verbose = getenv("UMAS_CUDA_VERBOSE");
    s->verbose = verbose && strcmp(verbose, "1") == 0;
    s->tapes.resize(fused ? w->num_layers : 1);
    s->precision = ctx->precision;
    cudaGetDevice(&s->device);
    if (s->precision == UMAS_PRECISION_3XTF32) { /* rows = 0: asks whether the kernel runs here */
        alignas(16) static const float aligned[4] = {0, 0, 0, 0};
        s->tensor_core_gemm = tc_gemm_nt_tma(TC_ACCUM_CHUNK_JAM, 2, 0, 4, 4, aligned, 4, aligned,
                                             aligned, 4, nullptr, 0.0f, nullptr, 4, nullptr) != 0;
        cudaDeviceGetAttribute(&s->multiprocessors, cudaDevAttrMultiProcessorCount, s->device);
    }
    if (s->precision == UMAS_PRECISION_OZAKI) { /* rows = 0: asks whether the kernel runs here */
        alignas(16) static int8_t slices[16];
        static int exponents[1];
        const i8_sliced probe = {slices, exponents, 16, 16};
        s->tensor_core_gemm =
            i8_gemm_nt(0, 4, 4, &probe, &probe, nullptr, 0.0f, nullptr, 4, nullptr) != 0;
        cudaDeviceGetAttribute(&s->multiprocessors, cudaDevAttrMultiProcessorCount, s->device);
    }
    if (check(cudaStreamCreate(&s->stream), "cudaStreamCreate", err))
        return -1;
    if (cublasCreate(&s->blas) != CUBLAS_STATUS_SUCCESS)
        return umas_fail(err, "device cuda: cuBLAS could not be initialised");
    cublasSetStream(s->blas, s->stream);
    if (cublasLtCreate(&s->blas_lt) != CUBLAS_STATUS_SUCCESS)
        s->blas_lt = nullptr; /* then biases are broadcast before the product */
    if (fused) {              /* cuBLAS must not allocate while a graph is being captured */
        const size_t workspace = (size_t)32 << 20;
        if (check(cudaMalloc(&s->blas_workspace, workspace), "the cuBLAS workspace", err))
            return -1;
        cublasSetWorkspace(s->blas, s->blas_workspace, workspace);
    }
    /* the arithmetic of each product is set per call (gemm) */

    int Z = w->num_elements, C = w->C;
    s->sphere = upload(s, w->sphere_embedding, (size_t)Z * C);
    s->source_embedding = upload(s, w->source_embedding, (size_t)Z * w->Ce);
    s->target_embedding = upload(s, w->target_embedding, (size_t)Z * w->Ce);
    s->system_embedding = upload(s, w->system_embedding, (size_t)C);
    umas_gaussian_basis basis;
    if (umas_gaussian_basis_init(&basis, w->B, w->cutoff))
        return umas_fail(err, "out of memory");
    s->offsets = upload(s, basis.offsets, (size_t)w->B);
    s->coeff = (float)basis.coeff;
    umas_gaussian_basis_free(&basis);
    s->degree = upload_radial(s, w->degree_radial);
    s->blocks.resize(w->num_layers);
    for (int l = 0; l < w->num_layers; l++) {
        const umas_block_weights &b = w->blocks[l];
        dev_block &d = s->blocks[l];
        d.norm_1 = upload_rms(s, b.norm_1, C);
        d.norm_2 = upload_rms(s, b.norm_2, C);
        d.radial = upload_radial(s, b.radial);
        d.conv1_m0 = upload_linear(s, b.conv1_m0);
        d.conv1_m0_gates = output_rows(d.conv1_m0, 0, 2 * w->H);
        d.conv1_m0_rows = output_rows(d.conv1_m0, 2 * w->H, 3 * w->H);
        d.conv1_m1 = upload_linear(s, b.conv1_m1);
        d.conv1_m2 = upload_linear(s, b.conv1_m2);
        d.conv2_m0 = upload_linear(s, b.conv2_m0);
        d.conv2_m1 = upload_linear(s, b.conv2_m1);
        d.conv2_m2 = upload_linear(s, b.conv2_m2);
        d.ffn_scalar = upload_linear(s, b.ffn_scalar);
        upload_so3_linear(s, b.ffn_so3_1, b.ffn_so3_1_bias, w->H, C, d.so3_1);
        upload_so3_linear(s, b.ffn_so3_2, b.ffn_so3_2_bias, C, w->H, d.so3_2);
        if (fast) {
            umas_fast_block form = {};
            if (umas_fast_block_init(&form, &b))
                return umas_fail(err, "out of memory for the block-form convolutions");
            d.block_conv1_m1 = upload_linear(s, form.conv1_m1);
            d.block_conv1_m2 = upload_linear(s, form.conv1_m2);
            d.block_conv2_m1 = upload_linear(s, form.conv2_m1);
            d.block_conv2_m2 = upload_linear(s, form.conv2_m2);
            umas_fast_block_free(&form);
        }
    }
    if (fast) {
        umas_unified_radial unified = {};
        if (umas_unified_radial_init(&unified, w))
            return umas_fail(err, "out of memory for the unified radial layer");
        s->unified_fc1 = upload_linear(s, unified.fc1);
        umas_unified_radial_free(&unified);
    }
    s->final_norm = upload_rms(s, w->final_norm, C);
    for (int i = 0; i < 3; i++)
        s->head[i] = upload_linear(s, w->head[i]);
    s->head_w3_dev = upload(s, w->head[2].weight, (size_t)w->H); /* exact: not a GEMM operand */
    if (upload_balance(ctx, s, err))
        return -1;
    if (check(cudaGetLastError(), "weight upload", err))
        return -1;
    for (void *p : s->weight_memory)
        if (!p)
            return umas_fail(err, "out of GPU memory for the model weights");

    /* chunk: about 1 GB of per-edge work space */
    size_t per_edge =
        (tape_floats_per_edge(s, w, 0) + scratch_floats_per_edge(s, w)) * sizeof(float);
    size_t chunk = ((size_t)1 << 30) / per_edge;
    s->recompute_chunk = (int)(chunk < 1024 ? 1024 : chunk > (1 << 20) ? (1 << 20) : chunk);
    s->chunk = s->recompute_chunk;
    return 0;
}

static int cuda_create(umas_context *ctx, umas_error *err) {
    return create(ctx, false, false, err);
}

static int cuda_create_fast(umas_context *ctx, umas_error *err) {
    return create(ctx, true, false, err);
}

static int cuda_create_fast_gpu(umas_context *ctx, umas_error *err) {
    return create(ctx, true, true, err);
}

static size_t cuda_bytes(const umas_context *ctx) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    return s->weight_bytes + buffer_bytes(s, &ctx->weights);
}

static int cuda_compute(umas_context *ctx, const umas_graph *graph, umas_result *result,
                        int gradients, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    graph_view g = {graph->num_nodes, graph->num_edges, graph->num_energy_nodes};
    cudaSetDevice(s->device);
    if (reserve_all(ctx, g, err))
        return -1;
    cudaStream_t st = s->stream;
    if (g.E > 0) {
        cudaMemcpyAsync(s->vec.ptr, graph->edge_vector, sizeof(double) * 3 * g.E,
                        cudaMemcpyHostToDevice, st);
        cudaMemcpyAsync(s->src.ptr, graph->edge_source, sizeof(int) * g.E, cudaMemcpyHostToDevice,
                        st);
        cudaMemcpyAsync(s->tgt.ptr, graph->edge_target, sizeof(int) * g.E, cudaMemcpyHostToDevice,
                        st);
    }
    if (g.N > 0)
        cudaMemcpyAsync(s->z.ptr, graph->atomic_numbers, sizeof(int) * g.N, cudaMemcpyHostToDevice,
                        st);
    if (run_model(ctx, s, g, gradients, result, err))
        return -1;
    if (gradients && g.E > 0 &&
        check(cudaMemcpy(ctx->edge_gradient, s->gradient.ptr, sizeof(double) * 3 * g.E,
                         cudaMemcpyDeviceToHost),
              "the edge gradients", err))
        return -1;
    return 0;
}

static int cuda_set_neighbors(umas_context *ctx, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    const umas_neighbor_state *nb = &ctx->neighbors;
    size_t N = (size_t)nb->num_nodes;
    size_t E = (size_t)(s->fused ? padded_edges(nb->num_edges) : nb->num_edges);
    size_t listed = (size_t)nb->num_edges;
    cudaSetDevice(s->device);
    /* the kept edges go straight into the graph's edge arrays (with room for padding) */
    const buffer_sizes z = {N, E, 0, listed};
    if (reserve_for(s, &ctx->weights, {LIST, EDGE_INPUT}, z, err))
        return -1;
    if (listed > 0) {
        cudaMemcpy(s->list_source.ptr, nb->source, listed * sizeof(int), cudaMemcpyHostToDevice);
        cudaMemcpy(s->list_target.ptr, nb->target, listed * sizeof(int), cudaMemcpyHostToDevice);
        cudaMemcpy(s->list_image.ptr, nb->image, 3 * listed * sizeof(int), cudaMemcpyHostToDevice);
    }
    return check(cudaGetLastError(), "uploading the neighbour list", err);
}

static int cuda_compute_positions(umas_context *ctx, const double *positions, const double cell[9],
                                  umas_result *result, int gradients, umas_error *err) {
    cuda_state *s = static_cast<cuda_state *>(ctx->backend_state);
    umas_neighbor_state *nb = &ctx->neighbors;
    int N = nb->num_nodes, listed = nb->num_edges;
    cudaSetDevice(s->device);
    cudaStream_t st = s->stream;
    if (N > 0)
        cudaMemcpyAsync(s->positions.ptr, positions, sizeof(double) * 3 * N, cudaMemcpyHostToDevice,
                        st);
    if (nb->has_images)
        cudaMemcpyAsync(s->cell.ptr, cell, sizeof(double) * 9, cudaMemcpyHostToDevice, st);
    int *flags = I(s->flags); /* [0] kept edges, [1] first kept edge of length 0 */
    const int no_edge[2] = {0, listed};
    cudaMemcpyAsync(flags, no_edge, sizeof no_edge, cudaMemcpyHostToDevice, st);
    const double *device_cell = static_cast<const double *>(s->cell.ptr);
    cu_neighbor_vectors(listed, static_cast<const double *>(s->positions.ptr), I(s->list_source),
                        I(s->list_target), nb->has_images ? I(s->list_image) : nullptr, device_cell,
                        ctx->weights.cutoff, static_cast<double *>(s->list_vector.ptr), I(s->keep),
                        flags + 1, st);
    cu_select_edges(listed, I(s->keep), I(s->slot), s->select_scratch.ptr, s->select_scratch.bytes,
                    I(s->list_source), I(s->list_target),
                    static_cast<const double *>(s->list_vector.ptr), I(s->kept), I(s->src),
                    I(s->tgt), static_cast<double *>(s->vec.ptr), flags, st);
    int host_flags[2];
    cudaMemcpyAsync(host_flags, flags, sizeof host_flags, cudaMemcpyDeviceToHost, st);
    if (check(cudaStreamSynchronize(st), "selecting the edges within the cutoff", err))
        return -1;
    if (host_flags[1] < listed) {
        int e = host_flags[1];
        return umas_fail_atoms(err, nb->source[e], nb->target[e],
                               "edge %d: atoms %d and %d are on top of each other (distance 0)", e,
                               nb->source[e], nb->target[e]);
    }
    /* umas_fast_gpu replays a captured graph of the step; its edge count is padded (inert
     * edges) so that the graph serves many steps */
    int kept = host_flags[0];
    bool graphed = s->fused && gradients && !ctx->keep_trace && !s->graphs_failed &&
                   !step_waits_for_processes(ctx) && N > 0 && kept > 0;
    graph_view g = {N, graphed ? padded_edges(kept) : kept, nb->num_energy_nodes};
    if (g.E > kept)
        cu_pad_edges(kept, g.E - kept, N, 2.0 * ctx->weights.cutoff, I(s->src), I(s->tgt),
                     static_cast<double *>(s->vec.ptr), st);
    if (reserve_all(ctx, g, err))
        return -1;
    if (gradients && result->node_virial &&
        reserve_for(s, &ctx->weights, {NODE_VIRIALS}, {(size_t)N, (size_t)g.E, 0, 0}, err))
        return -1;
    double *node_virial = result->node_virial ? static_cast<double *>(s->node_virial.ptr) : nullptr;
    if (N > 0)
        cudaMemcpyAsync(s->z.ptr, nb->atomic_numbers, sizeof(int) * N, cudaMemcpyHostToDevice, st);
    double start = seconds_now();
    if (graphed) {
        if (launch_step_graph(ctx, s, g, node_virial, err) ||
            download_node_output(ctx, s, N, "the step", err))
            return -1;
        result->seconds_forward = seconds_now() - start; /* one launch: all counted here */
        result->seconds_backward = 0;
        start = seconds_now();
    } else {
        if (run_model(ctx, s, g, gradients, result, err))
            return -1;
        if (!gradients)
            return 0;
        start = seconds_now();
        enqueue_forces(s, g, node_virial);
    }
    double *forces = static_cast<double *>(s->forces.ptr);
    if (result->forces && N > 0)
        cudaMemcpyAsync(result->forces, forces, sizeof(double) * 3 * N, cudaMemcpyDeviceToHost, st);
    if (node_virial && N > 0)
        cudaMemcpyAsync(result->node_virial, node_virial, sizeof(double) * 6 * N,
                        cudaMemcpyDeviceToHost, st);
    cudaMemcpyAsync(result->virial, s->virial.ptr, sizeof(double) * 6, cudaMemcpyDeviceToHost, st);
    if (result->edge_gradient && kept > 0) { /* only when asked for: O(edges) */
        cudaMemcpyAsync(nb->kept, s->kept.ptr, sizeof(int) * kept, cudaMemcpyDeviceToHost, st);
        cudaMemcpyAsync(ctx->edge_gradient, s->gradient.ptr, sizeof(double) * 3 * kept,
                        cudaMemcpyDeviceToHost, st);
    }
    if (check(cudaStreamSynchronize(st), "the forces", err) ||
        check(cudaGetLastError(), "the forces", err))
        return -1;
    if (result->edge_gradient)
        umas_list_edge_gradient(ctx, kept, result->edge_gradient);
    result->seconds_backward += seconds_now() - start;
    return 0;
}

} // namespace umas_cuda

using namespace umas_cuda;

extern "C" const umas_backend umas_backend_general_cuda = {
    "general",    "cuda",     cuda_create,        cuda_compute,
    cuda_destroy, cuda_bytes, cuda_set_neighbors, cuda_compute_positions,
};

extern "C" const umas_backend umas_backend_fast_cuda = {
    "umas_fast",  "cuda",     cuda_create_fast,   cuda_compute,
    cuda_destroy, cuda_bytes, cuda_set_neighbors, cuda_compute_positions,
};

extern "C" const umas_backend umas_backend_fast_gpu_cuda = {
    "umas_fast_gpu", "cuda",     cuda_create_fast_gpu, cuda_compute,
    cuda_destroy,    cuda_bytes, cuda_set_neighbors,   cuda_compute_positions,
};

extern "C" int umas_cuda_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" size_t umas_cuda_memory_in_use(void) {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return total - free_bytes;
}
