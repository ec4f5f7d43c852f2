/* step_graph.cu - umas_fast_gpu's MD step as one CUDA graph: the padded edge count that lets one
 * captured graph serve many steps, the forces after the backward, and the capture and replay. */
#include "cuda_internal.h"

namespace umas_cuda {

/* ---------------------------------------------------------------------------------------------
 * Neighbour-list route: the list lives on the device from one rebuild to the next; per step
 * positions go up, the kept edges are selected on the device, forces and virials come down.
 * ------------------------------------------------------------------------------------------- */

/* umas_fast_gpu: the number of edges a step runs with, E rounded up to a multiple of a power of
 * two of about E / 64 (at least 256), so that one captured graph serves the steps of a
 * neighbour list while the count within the cutoff wanders. The padding edges are inert
 * (cu_pad_edges): at most 1/64 + 256 / E more edge work. */
int padded_edges(int E) {
    if (E <= 0)
        return 0;
    long long grain = 256;
    while (grain * 128 <= E)
        grain *= 2;
    return (int)((E + grain - 1) / grain * grain);
}

/* Forces [N][3], the virial and (when node_virial is not null) per-atom virials from
 * s->gradient, on the device. */
void enqueue_forces(cuda_state *s, const graph_view &g, double *node_virial) {
    cu_scatter_edge_gradients(
        g.N, g.E, I(s->src), I(s->tgt), static_cast<const double *>(s->vec.ptr),
        static_cast<const double *>(s->gradient.ptr), static_cast<double *>(s->forces.ptr),
        static_cast<double *>(s->virial.ptr), node_virial, s->stream);
}

static void enqueue_step(umas_context *ctx, cuda_state *s, const graph_view &g,
                         double *node_virial) {
    enqueue_forward(ctx, s, g, 1);
    enqueue_backward(ctx, s, g);
    enqueue_forces(s, g, node_virial);
}

/* umas_fast_gpu: the step's device work (forward, backward, forces) on s->stream as a CUDA
 * graph: captured the first time a shape is met (atoms, padded edges, buffers), replayed after
 * that; the last four shapes are kept (the padded edge count can flip between neighbours). If
 * the driver refuses a capture, the step runs directly and graphs stay off. */
int launch_step_graph(umas_context *ctx, cuda_state *s, const graph_view &g, double *node_virial,
                      umas_error *err) {
    cudaStream_t st = s->stream;
    for (const step_graph &sg : s->graphs)
        if (sg.N == g.N && sg.E == g.E && sg.energy_nodes == g.energy_nodes &&
            sg.node_virial == (node_virial != nullptr) && sg.kept_blocks == s->kept_blocks &&
            sg.chunk == s->chunk && sg.keep_radial == s->keep_radial &&
            sg.generation == s->generation)
            return check(cudaGraphLaunch(sg.exec, st), "launching the step graph", err);
    step_graph sg;
    sg.N = g.N;
    sg.E = g.E;
    sg.energy_nodes = g.energy_nodes;
    sg.node_virial = node_virial != nullptr;
    sg.kept_blocks = s->kept_blocks;
    sg.chunk = s->chunk;
    sg.keep_radial = s->keep_radial;
    sg.generation = s->generation;
    cudaGraph_t graph = nullptr;
    bool captured = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (captured) {
        enqueue_step(ctx, s, g, node_virial);
        captured = cudaStreamEndCapture(st, &graph) == cudaSuccess && graph &&
                   cudaGraphInstantiate(&sg.exec, graph, 0) == cudaSuccess;
    }
    if (graph)
        cudaGraphDestroy(graph);
    if (!captured) {
        cudaGetLastError();
        s->graphs_failed = true;
        enqueue_step(ctx, s, g, node_virial);
        return check(cudaGetLastError(), "the step", err);
    }
    if (s->graphs.size() == 4) {
        cudaGraphExecDestroy(s->graphs.front().exec);
        s->graphs.erase(s->graphs.begin());
    }
    s->graphs.push_back(sg);
    return check(cudaGraphLaunch(sg.exec, st), "launching the step graph", err);
}

} // namespace umas_cuda
