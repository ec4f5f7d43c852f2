// test_model.cpp - the model file, its loader and the context: what loads, and what is refused
// with which message.
//
// Specification:
//  * a converted reference checkpoint loads with the checkpoint's hyperparameters and tasks;
//  * a missing, truncated, corrupt or inconsistent file gives an error string naming the file and
//    the first problem (a tensor with a wrong shape is named), never a crash; hostile values
//    (data_offsets 1e300 or a string, a string format_version) give a short message naming them;
//  * a context refuses an unknown task, an element outside the embedding table, and a charge or
//    spin outside the embedding range, each with a message saying what to fix;
//  * umas_compute refuses graphs with NaN vectors, overlapping atoms or bad indices.
#include "reference.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <cstdio>
#include <fstream>
#include <iterator>

namespace {

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary);
    out << bytes;
}

std::string temp_path(const std::string &name) {
    return ::testing::TempDir() + "umas_" + name;
}

// A copy of the tiny model whose JSON header went through `edit` (data section unchanged).
std::string edited_tiny_model(const std::string &name,
                              const std::function<void(std::string &)> &edit) {
    std::string bytes = read_bytes(model_path("tiny"));
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | (unsigned char)bytes[i];
    std::string header = bytes.substr(8, n), data = bytes.substr(8 + n);
    edit(header);
    while ((8 + header.size()) % 8)
        header += ' ';
    std::string out(8, '\0');
    for (int i = 0; i < 8; i++)
        out[i] = (char)((header.size() >> (8 * i)) & 0xff);
    std::string path = temp_path(name);
    write_bytes(path, out + header + data);
    return path;
}

void replace_once(std::string &text, const std::string &from, const std::string &to) {
    size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
}

std::string load_error(const std::string &path) {
    umas_error err = {};
    umas_model *m = umas_model_load(path.c_str(), &err);
    umas_model_free(m);
    return m ? "" : err.message;
}

TEST(ModelFile, TinyLoadsWithItsHyperparametersAndTasks) {
    umas_error err;
    umas_model *m = umas_model_load(model_path("tiny").c_str(), &err);
    ASSERT_NE(m, nullptr) << err.message;
    const umas_model_info *info = umas_model_get_info(m);
    EXPECT_STREQ(info->model_id, "UMA-S-1.2.1");
    EXPECT_EQ(info->sphere_channels, 32);
    EXPECT_EQ(info->hidden_channels, 32);
    EXPECT_EQ(info->edge_channels, 32);
    EXPECT_EQ(info->num_layers, 2);
    EXPECT_EQ(info->num_distance_basis, 16);
    EXPECT_EQ(info->num_experts, 4);
    EXPECT_EQ(info->max_neighbors, 300);
    EXPECT_DOUBLE_EQ(info->cutoff, 6.0);
    ASSERT_EQ(info->num_tasks, 3);
    EXPECT_STREQ(umas_model_task_name(m, 0), "oc20");
    EXPECT_STREQ(umas_model_task_name(m, 1), "omat");
    EXPECT_STREQ(umas_model_task_name(m, 2), "omol");
    EXPECT_EQ(umas_model_task_name(m, 3), nullptr);
    umas_model_free(m);
}

TEST(ModelFile, ModelIdDecidesTheCompositionQuirk) {
    umas_error err;
    umas_model *m = umas_model_load(model_path("tiny_v12").c_str(), &err);
    ASSERT_NE(m, nullptr) << err.message;
    EXPECT_STREQ(umas_model_get_info(m)->model_id, "UMA-S-1.2");
    umas_model_free(m);
}

TEST(ModelFile, UmasReferenceHasUmaSShape) {
    if (!file_exists(model_path("umas")))
        GTEST_SKIP() << "optional umas checkpoint not converted";
    umas_error err;
    umas_model *m = umas_model_load(model_path("umas").c_str(), &err);
    ASSERT_NE(m, nullptr) << err.message;
    const umas_model_info *info = umas_model_get_info(m);
    EXPECT_EQ(info->sphere_channels, 128);
    EXPECT_EQ(info->num_layers, 4);
    EXPECT_EQ(info->num_distance_basis, 64);
    EXPECT_EQ(info->num_experts, 2);
    EXPECT_EQ(info->num_tasks, 5);
    umas_model_free(m);
}

TEST(ModelFile, MissingFile) {
    EXPECT_NE(load_error("/nonexistent/model.safetensors").find("cannot open model file"),
              std::string::npos);
}

TEST(ModelFile, EmptyAndTruncatedFiles) {
    std::string bytes = read_bytes(model_path("tiny"));
    write_bytes(temp_path("empty"), "");
    EXPECT_NE(load_error(temp_path("empty")).find("too short"), std::string::npos);
    for (size_t keep : {(size_t)4, (size_t)100, bytes.size() / 2, bytes.size() - 1}) {
        write_bytes(temp_path("truncated"), bytes.substr(0, keep));
        std::string message = load_error(temp_path("truncated"));
        EXPECT_NE(message.find("truncated"), std::string::npos) << keep << ": " << message;
    }
}

TEST(ModelFile, CorruptHeader) {
    std::string path = edited_tiny_model("corrupt", [](std::string &h) { h[h.rfind('}')] = ','; });
    std::string message = load_error(path);
    EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
}

TEST(ModelFile, NotAUmasFile) {
    std::string path = edited_tiny_model(
        "no_metadata", [](std::string &h) { replace_once(h, "\"umas\":", "\"other\":"); });
    EXPECT_NE(load_error(path).find("convert the fairchem checkpoint with umas-convert"),
              std::string::npos);
}

TEST(ModelFile, WrongTensorShapeIsNamed) {
    // Same number of elements, transposed shape: only the schema check can catch it.
    std::string name = "backbone.blocks.1.edge_wise.so2_conv_2.fc_m0.weights";
    std::string path = edited_tiny_model("wrong_shape", [&](std::string &h) {
        size_t at = h.find("\"" + name + "\"");
        ASSERT_NE(at, std::string::npos);
        size_t shape = h.find("\"shape\":[4,96,96]", at);
        ASSERT_NE(shape, std::string::npos);
        h.replace(shape, 17, "\"shape\":[96,4,96]");
    });
    std::string message = load_error(path);
    EXPECT_NE(message.find("tensor '" + name + "' has shape [96, 4, 96]"), std::string::npos)
        << message;
    EXPECT_NE(message.find("need [4, 96, 96]"), std::string::npos) << message;
}

TEST(ModelFile, MissingTensorIsNamed) {
    std::string path = edited_tiny_model("missing_tensor", [](std::string &h) {
        replace_once(h, "\"backbone.norm.affine_bias\"", "\"backbone.norm.affine_bias_x\"");
    });
    std::string message = load_error(path);
    EXPECT_NE(message.find("missing tensor 'backbone.norm.affine_bias'"), std::string::npos)
        << message;
}

TEST(ModelFile, DataOffsetsOutsideTheFile) {
    std::string path = edited_tiny_model("offsets", [](std::string &h) {
        size_t at = h.find("\"data_offsets\":[");
        ASSERT_NE(at, std::string::npos);
        h.insert(at + 16, "99999999");
    });
    std::string message = load_error(path);
    EXPECT_NE(message.find("data_offsets"), std::string::npos) << message;
}

// The first tensor's data_offsets replaced by `offsets`; the loader's message.
std::string offsets_error(const std::string &offsets) {
    std::string path = edited_tiny_model("offsets_edit", [&](std::string &h) {
        size_t at = h.find("\"data_offsets\":[");
        ASSERT_NE(at, std::string::npos);
        size_t close = h.find(']', at);
        h.replace(at + 16, close - (at + 16), offsets);
    });
    return load_error(path);
}

TEST(ModelFile, DataOffsetsMessagesStayShort) {
    // Fuzzer finding L5: huge offsets were printed with %.0f (1e300: 301 digits, message cut).
    struct {
        const char *offsets, *message;
    } cases[] = {
        {"0,1e300", "data_offsets [0, 1e+300] out of range: exceed the "},
        {"0,123456789012345678901234567890", "data_offsets [0, 1.23457e+29] out of range"},
        {"0,2621909", "data_offsets [0, 2621909] out of range: exceed the "},
        {"1e300,1e301", "data_offsets [1e+300, 1e+301] out of range"},
        {"-8,256", "data_offsets [-8, 256] are not non-negative integers"},
        {"0.5,256", "data_offsets [0.5, 256] are not non-negative integers"},
        {"256,0", "data_offsets [256, 0] reversed"},
        {"\"0\",256", "data_offsets must be two numbers (got a string, a number)"},
        {"0,null", "data_offsets must be two numbers (got a number, null)"},
    };
    for (const auto &c : cases) {
        std::string message = offsets_error(c.offsets);
        EXPECT_NE(message.find(c.message), std::string::npos) << c.offsets << ": " << message;
        EXPECT_LT(message.size(), 200u) << c.offsets << ": " << message;
        EXPECT_EQ(message.find("nan"), std::string::npos) << c.offsets << ": " << message;
    }
}

TEST(ModelFile, FormatVersionMustBeANumber) {
    // Fuzzer finding L5: a string format_version was printed as "-nan".
    struct {
        const char *value, *message;
    } cases[] = {
        {"\\\"1\\\"", "model metadata: format_version must be a number (got a string)"},
        {"null", "model metadata: format_version must be a number (got null)"},
        {"[1]", "model metadata: format_version must be a number (got an array)"},
        {"2", "model file format_version 2 is not supported (this umas reads 1)"},
        {"1.5", "model file format_version 1.5 is not supported (this umas reads 1)"},
    };
    for (const auto &c : cases) {
        std::string path = edited_tiny_model("format_version", [&](std::string &h) {
            replace_once(h, "\\\"format_version\\\": 1,",
                         std::string("\\\"format_version\\\": ") + c.value + ",");
        });
        std::string message = load_error(path);
        EXPECT_NE(message.find(c.message), std::string::npos) << c.value << ": " << message;
        EXPECT_EQ(message.find("nan"), std::string::npos) << c.value << ": " << message;
    }
    std::string path = edited_tiny_model("format_version_missing", [](std::string &h) {
        replace_once(h, "\\\"format_version\\\": 1,", "");
    });
    std::string message = load_error(path);
    EXPECT_NE(message.find("format_version must be a number (got missing)"), std::string::npos)
        << message;
}

TEST(ModelFile, UnsupportedArchitectureIsRefused) {
    std::string path = edited_tiny_model(
        "lmax", [](std::string &h) { replace_once(h, "\\\"lmax\\\": 2", "\\\"lmax\\\": 3"); });
    std::string message = load_error(path);
    EXPECT_NE(message.find("unsupported model: lmax = 3"), std::string::npos) << message;
}

TEST(ModelFile, FuzzerFindingsGiveCleanErrors) {
    // Inputs the loader fuzzer found (tests/fuzz/crashes, docs/reliability.md).
    std::string dir = test_data_dir() + "/../fuzz/crashes/";
    struct {
        const char *file, *message;
    } cases[] = {
        {"loader-accepts-trailing-garbage.safetensors", "not valid JSON"},
        {"loader-numel-overflow-accepted.safetensors", "shape too large"},
        {"loader-segv-with-cjson-1.7.17-page-end.safetensors", "not valid JSON"},
        {"loader-slow-dataset-mapping-4000.safetensors", "dataset_mapping has 4000 entries"},
    };
    for (const auto &c : cases) {
        std::string message = load_error(dir + c.file);
        EXPECT_NE(message.find(c.message), std::string::npos) << c.file << ": " << message;
    }
}

// ---------------------------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------------------------

class Context : public ::testing::Test {
  protected:
    void SetUp() override {
        model = umas_model_load(model_path("tiny").c_str(), &err);
        ASSERT_NE(model, nullptr) << err.message;
    }
    void TearDown() override {
        umas_model_free(model);
    }
    // The error of creating a context, "" when it succeeds.
    std::string create_error(const char *task, int charge, int spin, std::vector<int> z,
                             const char *backend = "general") {
        umas_system sys = one_process_system(task, charge, spin, (int)z.size(), z.data());
        umas_options opt = {backend, "cpu", nullptr};
        umas_context *ctx = umas_context_create(model, &sys, &opt, &err);
        umas_context_free(ctx);
        return ctx ? "" : err.message;
    }
    umas_model *model = nullptr;
    umas_error err = {};
};

TEST_F(Context, AcceptsAValidSystem) {
    EXPECT_EQ(create_error("omat", 0, 0, {29, 8}), "");
    EXPECT_EQ(create_error("omol", -1, 2, {6, 1, 1, 1, 1}), "");
}

TEST_F(Context, UnknownTask) {
    EXPECT_EQ(create_error("omatt", 0, 0, {29}),
              "the model has no task 'omatt' (it has: oc20, omat, omol)");
}

TEST_F(Context, ElementOutsideTheEmbeddingTable) {
    EXPECT_EQ(create_error("omat", 0, 0, {29, 100}),
              "atom 1 has atomic number 100; the model knows 1..99");
    EXPECT_EQ(create_error("omat", 0, 0, {0}), "atom 0 has atomic number 0; the model knows 1..99");
}

TEST_F(Context, ChargeAndSpinRange) {
    EXPECT_EQ(create_error("omol", 101, 1, {6}),
              "charge 101 is outside the model's range -100..100");
    EXPECT_EQ(create_error("omol", 0, -1, {6}),
              "spin multiplicity -1 is outside the model's range 0..100");
    EXPECT_EQ(create_error("omol", 0, 101, {6}),
              "spin multiplicity 101 is outside the model's range 0..100");
}

TEST_F(Context, EmptySystem) {
    EXPECT_EQ(create_error("omat", 0, 0, {}), "the system has no atoms (0)");
}

TEST_F(Context, UnknownBackend) {
    EXPECT_NE(create_error("omat", 0, 0, {29}, "fastest").find("unknown backend 'fastest'"),
              std::string::npos);
}

TEST_F(Context, ElementCountsGiveTheSameMergeAsAtomicNumbers) {
    std::vector<int> z = {29, 29, 8, 29};
    std::vector<int> counts(100, 0);
    counts[29] = 3;
    counts[8] = 1;
    umas_system by_atoms = one_process_system("omat", 0, 0, 4, z.data());
    umas_system by_counts = one_process_system("omat", 0, 0, 4, nullptr, counts.data());
    umas_context *a = umas_context_create(model, &by_atoms, nullptr, &err);
    umas_context *b = umas_context_create(model, &by_counts, nullptr, &err);
    ASSERT_TRUE(a && b) << err.message;
    for (int k = 0; k < 4; k++)
        EXPECT_DOUBLE_EQ(umas_context_expert_coefficients(a)[k],
                         umas_context_expert_coefficients(b)[k]);
    umas_context_free(a);
    umas_context_free(b);
}

TEST_F(Context, ComputeRefusesBadGraphs) {
    std::vector<int> z = {29, 29};
    umas_system sys = one_process_system("omat", 0, 0, 2, z.data());
    umas_context *ctx = umas_context_create(model, &sys, nullptr, &err);
    ASSERT_NE(ctx, nullptr) << err.message;
    int src[2] = {0, 1}, tgt[2] = {1, 0};
    double vec[6] = {2.5, 0, 0, -2.5, 0, 0};
    umas_graph g = {2, 2, z.data(), 2, src, tgt, vec};
    umas_result r = {};
    ASSERT_EQ(umas_compute(ctx, &g, &r, &err), 0) << err.message;

    vec[1] = NAN;
    EXPECT_NE(umas_compute(ctx, &g, &r, &err), 0);
    EXPECT_NE(std::string(err.message).find("non-finite"), std::string::npos);
    EXPECT_EQ(err.atom[0], -1); // an error about no particular pair of atoms
    vec[0] = vec[1] = 0;
    EXPECT_NE(umas_compute(ctx, &g, &r, &err), 0);
    EXPECT_NE(std::string(err.message).find("on top of each other"), std::string::npos);
    EXPECT_EQ(err.atom[0], 0); // edge 0: source 0, target 1
    EXPECT_EQ(err.atom[1], 1);
    vec[0] = 2.5;
    src[1] = 5;
    EXPECT_NE(umas_compute(ctx, &g, &r, &err), 0);
    EXPECT_NE(std::string(err.message).find("outside 0..1"), std::string::npos);
    umas_context_free(ctx);
}

TEST_F(Context, AtomsWithoutEdgesGetTheirEmbeddingEnergy) {
    // Two atoms far apart: no edges at all (fairchem's "fake edge" case gives the same result).
    std::vector<int> z = {29, 8};
    umas_system sys = one_process_system("omat", 0, 0, 2, z.data());
    umas_context *ctx = umas_context_create(model, &sys, nullptr, &err);
    ASSERT_NE(ctx, nullptr) << err.message;
    double per_atom[2];
    umas_graph g = {2, 2, z.data(), 0, nullptr, nullptr, nullptr};
    umas_result r = {};
    r.node_energy = per_atom;
    ASSERT_EQ(umas_compute(ctx, &g, &r, &err), 0) << err.message;
    EXPECT_TRUE(std::isfinite(r.energy));
    EXPECT_DOUBLE_EQ(r.energy, per_atom[0] + per_atom[1]);
    umas_context_free(ctx);
}

TEST_F(Context, EmptyGraphAndLoneAtomWithGradients) {
    // A rank that owns no atoms gets an empty graph; a lone atom has no edges: both are defined.
    std::vector<int> z = {29};
    umas_system sys = one_process_system("omat", 0, 0, 1, z.data());
    umas_context *ctx = umas_context_create(model, &sys, nullptr, &err);
    ASSERT_NE(ctx, nullptr) << err.message;
    double forces[3] = {1, 1, 1};
    umas_result r = {};
    r.forces = forces;
    r.want_virial = 1;
    umas_graph empty = {0, 0, nullptr, 0, nullptr, nullptr, nullptr};
    ASSERT_EQ(umas_compute(ctx, &empty, &r, &err), 0) << err.message;
    EXPECT_EQ(r.energy, 0.0);
    umas_graph lone = {1, 1, z.data(), 0, nullptr, nullptr, nullptr};
    ASSERT_EQ(umas_compute(ctx, &lone, &r, &err), 0) << err.message;
    EXPECT_TRUE(std::isfinite(r.energy));
    for (int k = 0; k < 3; k++)
        EXPECT_EQ(forces[k], 0.0);
    for (double v : r.virial)
        EXPECT_EQ(v, 0.0);
    umas_context_free(ctx);
}

} // namespace
