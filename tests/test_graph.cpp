// test_graph.cpp - neighbour list (umas_build_edges), fairchem's max_neighbors rule
// (umas_limit_neighbors), element symbols and the extended-XYZ reader.
//
// Reference data: $UMAS_TEST_DATA (set by CTest), else the compile definition UMAS_TEST_DATA_DIR:
// <data>/{tiny,umas}/<case>/{positions,cell,pbc,edge_index,edge_cell_offsets}.npy.
#include "npy.hpp"
#include "umas.h"
#include "extxyz.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::string data_dir() {
    const char *env = std::getenv("UMAS_TEST_DATA");
    if (env != nullptr && env[0] != '\0') {
        return env;
    }
#ifdef UMAS_TEST_DATA_DIR
    return UMAS_TEST_DATA_DIR;
#else
    return "tests/data";
#endif
}

// A structure as umas_build_edges takes it.
struct Structure {
    int num_atoms = 0;
    std::vector<double> positions; // [N][3]
    double cell[9] = {0};          // rows = lattice vectors
    int pbc[3] = {0, 0, 0};
};

Structure load_structure(const fs::path &dir) {
    Structure s;
    NpyArray pos = npy_load((dir / "positions.npy").string());
    NpyArray cell = npy_load((dir / "cell.npy").string());
    NpyArray pbc = npy_load((dir / "pbc.npy").string());
    s.num_atoms = static_cast<int>(pos.shape.at(0));
    s.positions = pos.values;
    for (int k = 0; k < 9; k++) {
        s.cell[k] = cell.values.at(k);
    }
    for (int a = 0; a < 3; a++) {
        s.pbc[a] = pbc.values.at(a) != 0;
    }
    return s;
}

// Owns an umas_edge_list.
struct Edges {
    umas_edge_list list{};
    Edges() = default;
    Edges(const Edges &) = delete;
    Edges &operator=(const Edges &) = delete;
    ~Edges() {
        umas_edge_list_free(&list);
    }
    int size() const {
        return list.num_edges;
    }
};

// Builds the edges of s; fails the test on error.
void build(const Structure &s, double cutoff, Edges &edges) {
    umas_error err{};
    int status =
        umas_build_edges(s.num_atoms, s.positions.data(), s.cell, s.pbc, cutoff, &edges.list, &err);
    ASSERT_EQ(status, 0) << err.message;
}

// An edge as (target, source, n0, n1, n2): the documented output order.
using Key = std::tuple<int, int, int, int, int>;

std::vector<Key> keys(const umas_edge_list &e) {
    std::vector<Key> k(e.num_edges);
    for (int i = 0; i < e.num_edges; i++) {
        const int *n = e.cell_shift + 3 * i;
        k[i] = Key(e.target[i], e.source[i], n[0], n[1], n[2]);
    }
    return k;
}

// The shift n . cell summed as umas_build_edges does (periodic directions only).
double shift_component(const Structure &s, const int n[3], int c) {
    double shift = 0;
    for (int a = 0; a < 3; a++) {
        if (s.pbc[a]) {
            shift += n[a] * s.cell[3 * a + c];
        }
    }
    return shift;
}

// Checks the order, the vectors (r_j - r_i + n . cell) and that every edge is within the cutoff.
void check_edges(const Structure &s, const umas_edge_list &e, double cutoff, double tol) {
    std::vector<Key> k = keys(e);
    for (size_t i = 1; i < k.size(); i++) {
        ASSERT_LT(k[i - 1], k[i]) << "edges not sorted by (target, source, n) at " << i;
    }
    for (int i = 0; i < e.num_edges; i++) {
        int src = e.source[i], tgt = e.target[i];
        ASSERT_GE(src, 0);
        ASSERT_LT(src, s.num_atoms);
        ASSERT_GE(tgt, 0);
        ASSERT_LT(tgt, s.num_atoms);
        double d2 = 0;
        for (int c = 0; c < 3; c++) {
            double expect = s.positions[3 * src + c] - s.positions[3 * tgt + c] +
                            shift_component(s, e.cell_shift + 3 * i, c);
            ASSERT_NEAR(e.vector[3 * i + c], expect, tol) << "edge " << i;
            d2 += e.vector[3 * i + c] * e.vector[3 * i + c];
        }
        ASSERT_GT(d2, 0.0);
        ASSERT_LE(d2, cutoff * cutoff);
    }
}

// Checks that (j -> i, n) exists for every (i -> j, -n): a full, symmetric neighbour list.
void check_symmetric(const umas_edge_list &e) {
    std::vector<Key> k = keys(e);
    std::vector<Key> reversed(k.size());
    for (size_t i = 0; i < k.size(); i++) {
        auto [t, s, n0, n1, n2] = k[i];
        reversed[i] = Key(s, t, -n0, -n1, -n2);
    }
    std::sort(reversed.begin(), reversed.end());
    EXPECT_TRUE(k == reversed) << "the edge list is not symmetric";
}

std::vector<int> neighbours_per_target(const umas_edge_list &e, int num_atoms) {
    std::vector<int> count(num_atoms, 0);
    for (int i = 0; i < e.num_edges; i++) {
        count[e.target[i]]++;
    }
    return count;
}

// Reference edges by brute force: every pair and every image n with |n_a| <= K_a, where K_a
// bounds any image within reach (|n . cell| <= 2 R + cutoff, and |n . cell| >= |n_a| h_a with
// h_a the distance of lattice vector a from the span of the other periodic ones).
std::vector<std::pair<Key, std::array<double, 3>>> brute_force(const Structure &s, double cutoff) {
    double centre[3] = {0, 0, 0}, radius = 0;
    for (int i = 0; i < s.num_atoms; i++) {
        for (int c = 0; c < 3; c++) {
            centre[c] += s.positions[3 * i + c] / s.num_atoms;
        }
    }
    for (int i = 0; i < s.num_atoms; i++) {
        double d2 = 0;
        for (int c = 0; c < 3; c++) {
            double d = s.positions[3 * i + c] - centre[c];
            d2 += d * d;
        }
        radius = std::max(radius, std::sqrt(d2));
    }
    int reach[3] = {0, 0, 0};
    for (int a = 0; a < 3; a++) {
        if (!s.pbc[a]) {
            continue;
        }
        // Component of lattice vector a orthogonal to the other periodic ones (Gram-Schmidt).
        std::vector<std::array<double, 3>> others;
        for (int b = 0; b < 3; b++) {
            if (b != a && s.pbc[b]) {
                others.push_back({s.cell[3 * b], s.cell[3 * b + 1], s.cell[3 * b + 2]});
            }
        }
        for (size_t p = 0; p < others.size(); p++) { // orthonormalise the others
            for (size_t q = 0; q < p; q++) {
                double d = 0;
                for (int c = 0; c < 3; c++) {
                    d += others[p][c] * others[q][c];
                }
                for (int c = 0; c < 3; c++) {
                    others[p][c] -= d * others[q][c];
                }
            }
            double len = std::sqrt(others[p][0] * others[p][0] + others[p][1] * others[p][1] +
                                   others[p][2] * others[p][2]);
            for (int c = 0; c < 3; c++) {
                others[p][c] /= len;
            }
        }
        double v[3] = {s.cell[3 * a], s.cell[3 * a + 1], s.cell[3 * a + 2]};
        for (auto &o : others) {
            double d = v[0] * o[0] + v[1] * o[1] + v[2] * o[2];
            for (int c = 0; c < 3; c++) {
                v[c] -= d * o[c];
            }
        }
        double h = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        reach[a] = static_cast<int>(std::floor((2 * radius + cutoff) / h)) + 1;
    }
    std::vector<std::pair<Key, std::array<double, 3>>> out;
    for (int i = 0; i < s.num_atoms; i++) {
        for (int j = 0; j < s.num_atoms; j++) {
            for (int n0 = -reach[0]; n0 <= reach[0]; n0++) {
                for (int n1 = -reach[1]; n1 <= reach[1]; n1++) {
                    for (int n2 = -reach[2]; n2 <= reach[2]; n2++) {
                        int n[3] = {n0, n1, n2};
                        std::array<double, 3> v;
                        for (int c = 0; c < 3; c++) {
                            v[c] = s.positions[3 * j + c] - s.positions[3 * i + c] +
                                   shift_component(s, n, c);
                        }
                        double d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                        if (d2 > 0 && d2 <= cutoff * cutoff) {
                            out.push_back({Key(i, j, n0, n1, n2), v});
                        }
                    }
                }
            }
        }
    }
    std::sort(out.begin(), out.end(),
              [](const auto &x, const auto &y) { return x.first < y.first; });
    return out;
}

// Edge vectors as a sorted multiset of (target, source, rounded vector), comparable between two
// descriptions of the same structure (different cells or images).
std::vector<std::tuple<int, int, long long, long long, long long>>
vector_multiset(const umas_edge_list &e) {
    std::vector<std::tuple<int, int, long long, long long, long long>> out(e.num_edges);
    for (int i = 0; i < e.num_edges; i++) {
        const double *v = e.vector + 3 * i;
        out[i] = {e.target[i], e.source[i], std::llround(v[0] * 1e6), std::llround(v[1] * 1e6),
                  std::llround(v[2] * 1e6)};
    }
    std::sort(out.begin(), out.end());
    return out;
}

// FCC Cu, nx x ny x nz conventional cells of a = 3.61 A, rattled by N(0, sigma) per component.
Structure make_fcc(int nx, int ny, int nz, double sigma, unsigned seed) {
    const double a = 3.61;
    const double basis[4][3] = {{0, 0, 0}, {0.5, 0.5, 0}, {0.5, 0, 0.5}, {0, 0.5, 0.5}};
    Structure s;
    std::mt19937 rng(seed);
    std::normal_distribution<double> noise(0.0, sigma);
    for (int x = 0; x < nx; x++) {
        for (int y = 0; y < ny; y++) {
            for (int z = 0; z < nz; z++) {
                for (const auto &b : basis) {
                    s.positions.push_back((x + b[0]) * a + noise(rng));
                    s.positions.push_back((y + b[1]) * a + noise(rng));
                    s.positions.push_back((z + b[2]) * a + noise(rng));
                }
            }
        }
    }
    s.num_atoms = static_cast<int>(s.positions.size() / 3);
    s.cell[0] = nx * a;
    s.cell[4] = ny * a;
    s.cell[8] = nz * a;
    s.pbc[0] = s.pbc[1] = s.pbc[2] = 1;
    return s;
}

std::vector<fs::path> reference_cases() {
    std::vector<fs::path> cases;
    for (const char *model : {"tiny", "umas"}) {
        fs::path dir = fs::path(data_dir()) / model;
        if (!fs::is_directory(dir)) {
            continue;
        }
        for (const auto &entry : fs::directory_iterator(dir)) {
            if (fs::exists(entry.path() / "edge_index.npy")) {
                cases.push_back(entry.path());
            }
        }
    }
    std::sort(cases.begin(), cases.end());
    return cases;
}

} // namespace

// ------------------------------------------------------------------------------------------------
// Elements

TEST(Elements, SymbolsAndNumbers) {
    EXPECT_EQ(umas_element_number("H"), 1);
    EXPECT_EQ(umas_element_number("Cu"), 29);
    EXPECT_EQ(umas_element_number("Og"), 118);
    EXPECT_EQ(umas_element_number("Xx"), 0);
    EXPECT_EQ(umas_element_number("cu"), 0); // case-sensitive
    EXPECT_EQ(umas_element_number(""), 0);
    EXPECT_EQ(umas_element_number(nullptr), 0);
    EXPECT_EQ(umas_element_symbol(0), nullptr);
    EXPECT_EQ(umas_element_symbol(119), nullptr);
    EXPECT_STREQ(umas_element_symbol(8), "O");
    EXPECT_STREQ(umas_element_symbol(74), "W");
    for (int z = 1; z <= 118; z++) {
        const char *symbol = umas_element_symbol(z);
        ASSERT_NE(symbol, nullptr) << z;
        EXPECT_EQ(umas_element_number(symbol), z) << symbol;
    }
}

// ------------------------------------------------------------------------------------------------
// umas_build_edges against fairchem's edges (cases a..e of both models).

TEST(BuildEdges, MatchesFairchemReference) {
    std::vector<fs::path> cases = reference_cases();
    ASSERT_GE(cases.size(), 10u) << "reference cases not found under " << data_dir();
    for (const fs::path &dir : cases) {
        SCOPED_TRACE(dir.string());
        Structure s = load_structure(dir);
        NpyArray index = npy_load((dir / "edge_index.npy").string());
        NpyArray offsets = npy_load((dir / "edge_cell_offsets.npy").string());
        ASSERT_EQ(index.shape.size(), 2u);
        ASSERT_EQ(index.shape[0], 2u);
        const size_t num_ref = index.shape[1];
        ASSERT_EQ(offsets.shape, (std::vector<size_t>{num_ref, 3}));
        std::vector<Key> expect(num_ref);
        for (size_t e = 0; e < num_ref; e++) {
            expect[e] = Key(static_cast<int>(index.at(1, e)), static_cast<int>(index.at(0, e)),
                            static_cast<int>(offsets.at(e, 0)), static_cast<int>(offsets.at(e, 1)),
                            static_cast<int>(offsets.at(e, 2)));
        }
        std::sort(expect.begin(), expect.end());

        Edges edges;
        build(s, 6.0, edges);
        check_edges(s, edges.list, 6.0, 1e-12);
        std::vector<Key> got = keys(edges.list);
        EXPECT_EQ(got.size(), num_ref);
        std::vector<Key> missing, extra;
        std::set_difference(expect.begin(), expect.end(), got.begin(), got.end(),
                            std::back_inserter(missing));
        std::set_difference(got.begin(), got.end(), expect.begin(), expect.end(),
                            std::back_inserter(extra));
        EXPECT_TRUE(missing.empty()) << missing.size() << " reference edges missing";
        EXPECT_TRUE(extra.empty()) << extra.size() << " edges not in the reference";
        check_symmetric(edges.list);
    }
}

TEST(BuildEdges, CuFcc2000) {
    fs::path dir = fs::path(data_dir()) / "tiny" / "f_cu_fcc_2000";
    Structure s = load_structure(dir);
    ASSERT_EQ(s.num_atoms, 2000);
    Edges edges;
    build(s, 6.0, edges);
    EXPECT_EQ(edges.size(), 156000);
    std::vector<int> count = neighbours_per_target(edges.list, s.num_atoms);
    EXPECT_EQ(*std::min_element(count.begin(), count.end()), 77);
    EXPECT_EQ(*std::max_element(count.begin(), count.end()), 79);
    check_edges(s, edges.list, 6.0, 1e-12);
    check_symmetric(edges.list);
}

TEST(BuildEdges, CuFcc16000) {
    Structure s = make_fcc(10, 10, 40, 0.05, 7);
    ASSERT_EQ(s.num_atoms, 16000);
    Edges edges;
    build(s, 6.0, edges);
    std::vector<int> count = neighbours_per_target(edges.list, s.num_atoms);
    EXPECT_GE(*std::min_element(count.begin(), count.end()), 74);
    EXPECT_LE(*std::max_element(count.begin(), count.end()), 82);
    check_edges(s, edges.list, 6.0, 1e-12);
    check_symmetric(edges.list);
}

// Same structure, cell re-expressed by a unimodular change of basis, atoms moved by lattice
// vectors far outside the cell: the same edge vectors between the same atoms.
TEST(BuildEdges, InvariantToCellBasisAndUnwrappedPositions) {
    for (const char *name : {"b_triclinic_perovskite_60", "a_cu_fcc_108", "e_si_primitive_2"}) {
        SCOPED_TRACE(name);
        Structure s = load_structure(fs::path(data_dir()) / "tiny" / name);
        Structure t = s;
        // rows a' = a, b' = b + a, c' = c + a + b (det 1), then a'' = a' - 2 c'.
        const int m[3][3] = {{-1, -2, -2}, {1, 1, 0}, {1, 1, 1}};
        for (int r = 0; r < 3; r++) {
            for (int c = 0; c < 3; c++) {
                t.cell[3 * r + c] = 0;
                for (int k = 0; k < 3; k++) {
                    t.cell[3 * r + c] += m[r][k] * s.cell[3 * k + c];
                }
            }
        }
        for (int i = 0; i < s.num_atoms; i++) {
            int n[3] = {(i % 5) - 2, 3 * ((i % 3) - 1), (i % 2) ? 4 : -3};
            for (int c = 0; c < 3; c++) {
                t.positions[3 * i + c] +=
                    n[0] * s.cell[c] + n[1] * s.cell[3 + c] + n[2] * s.cell[6 + c];
            }
        }
        Edges a, b;
        build(s, 6.0, a);
        build(t, 6.0, b);
        check_edges(t, b.list, 6.0, 1e-12);
        ASSERT_EQ(a.size(), b.size());
        auto va = vector_multiset(a.list), vb = vector_multiset(b.list);
        int differ = 0;
        for (size_t e = 0; e < va.size(); e++) {
            auto [ti, si, x, y, z] = va[e];
            auto [tj, sj, u, v, w] = vb[e];
            if (ti != tj || si != sj || std::llabs(x - u) > 1 || std::llabs(y - v) > 1 ||
                std::llabs(z - w) > 1) {
                differ++;
            }
        }
        EXPECT_EQ(differ, 0);
    }
}

TEST(BuildEdges, SmallCellManyImages) {
    Structure s = load_structure(fs::path(data_dir()) / "tiny" / "e_si_primitive_2");
    Edges edges;
    build(s, 6.0, edges);
    EXPECT_EQ(edges.size(), 90);
    int self = 0;
    for (int e = 0; e < edges.size(); e++) {
        self += edges.list.source[e] == edges.list.target[e];
    }
    EXPECT_EQ(self, 36);
    std::vector<int> count = neighbours_per_target(edges.list, s.num_atoms);
    EXPECT_EQ(count[0], 45);
    EXPECT_EQ(count[1], 45);
}

// Random structures (triclinic, skewed, smaller than the cutoff, mixed periodicity, unwrapped
// atoms) against a brute-force search: the same edges and bit-equal vectors. (Atoms on top of
// each other are an error: AtomsOnTopOfEachOtherAreAnError.)
TEST(BuildEdges, MatchesBruteForce) {
    const double nan = std::nan("");
    struct Case {
        const char *name;
        double cell[9];
        int pbc[3];
        int num_atoms;
        double cutoff;
    };
    const Case cases[] = {
        {"cubic", {10, 0, 0, 0, 10, 0, 0, 0, 10}, {1, 1, 1}, 40, 6.0},
        {"triclinic", {7, 0, 0, 3.1, 6, 0, -2.3, 1.7, 5.5}, {1, 1, 1}, 30, 6.0},
        {"left-handed", {0, 6.5, 0.4, 7, 0, 0, -1.2, 0.9, 6.1}, {1, 1, 1}, 25, 5.0},
        {"smaller than cutoff", {2.5, 0, 0, 1.1, 2.4, 0, 0.3, -0.7, 2.2}, {1, 1, 1}, 3, 6.0},
        {"very skewed", {5, 0, 0, 23, 4, 0, 0, 0, 5}, {1, 1, 1}, 12, 6.0},
        {"rotated", {3.2, 2.1, -1.0, -1.5, 3.9, 0.7, 0.8, 0.2, 4.4}, {1, 1, 1}, 8, 6.0},
        {"T F T, garbage b", {6, 0, 0, nan, nan, nan, 1.5, 0, 5}, {1, 0, 1}, 20, 6.0},
        {"T T F slab", {4, 0, 0, 2, 3.5, 0, 0, 0, 0}, {1, 1, 0}, 15, 6.0},
        {"F F T wire", {0, 0, 0, 0, 0, 0, 0.5, 0.3, 2.9}, {0, 0, 1}, 10, 6.0},
        {"molecule, garbage cell", {nan, 0, 0, 0, nan, 0, 0, 0, 0}, {0, 0, 0}, 25, 4.0},
    };
    std::mt19937 rng(12345);
    std::uniform_real_distribution<double> frac(-0.7, 1.7), offset(-7.0, 7.0);
    for (const Case &c : cases) {
        SCOPED_TRACE(c.name);
        Structure s;
        s.num_atoms = c.num_atoms;
        std::copy(c.cell, c.cell + 9, s.cell);
        std::copy(c.pbc, c.pbc + 3, s.pbc);
        for (int i = 0; i < s.num_atoms; i++) {
            double r[3] = {0, 0, 0};
            for (int a = 0; a < 3; a++) {
                if (s.pbc[a]) {
                    double f = frac(rng);
                    for (int k = 0; k < 3; k++) {
                        r[k] += f * s.cell[3 * a + k];
                    }
                } else {
                    r[a] += offset(rng); // a Cartesian coordinate (the cells here keep it so)
                }
            }
            s.positions.insert(s.positions.end(), r, r + 3);
        }
        Edges edges;
        build(s, c.cutoff, edges);
        check_edges(s, edges.list, c.cutoff, 1e-12);
        auto expect = brute_force(s, c.cutoff);
        ASSERT_EQ(static_cast<size_t>(edges.size()), expect.size());
        for (int e = 0; e < edges.size(); e++) {
            const int *n = edges.list.cell_shift + 3 * e;
            ASSERT_EQ(Key(edges.list.target[e], edges.list.source[e], n[0], n[1], n[2]),
                      expect[e].first)
                << "edge " << e;
            for (int k = 0; k < 3; k++) {
                ASSERT_NEAR(edges.list.vector[3 * e + k], expect[e].second[k], 1e-12);
            }
        }
        check_symmetric(edges.list);
    }
}

TEST(BuildEdges, SimpleCubicSelfImages) {
    Structure s;
    s.num_atoms = 1;
    s.positions = {12.0, -31.0, 7.5}; // far outside the cell
    double cell[9] = {5, 0, 0, 0, 5, 0, 0, 0, 5};
    std::copy(cell, cell + 9, s.cell);
    s.pbc[0] = s.pbc[1] = s.pbc[2] = 1;
    Edges edges;
    build(s, 6.0, edges);
    ASSERT_EQ(edges.size(), 6); // the 6 images at 5 A (5 sqrt 2 > 6)
    check_edges(s, edges.list, 6.0, 1e-12);
    // inclusive cutoff: exactly 5 A is in
    Edges exact;
    build(s, 5.0, exact);
    EXPECT_EQ(exact.size(), 6);
}

// Edges into the first k atoms only: the full list without the other targets' edges, in the same
// order and with the same vectors, for every k (pair_umas' local mode: ghosts are only sources).
TEST(BuildEdges, IntoTheFirstTargetsIsThePrefixOfTheFullList) {
    std::vector<fs::path> cases = reference_cases();
    ASSERT_FALSE(cases.empty());
    Structure s = load_structure(cases.front());
    Edges all;
    build(s, 6.0, all);
    for (int k : {0, 1, s.num_atoms / 2, s.num_atoms}) {
        SCOPED_TRACE("targets " + std::to_string(k));
        umas_edge_list part{};
        umas_error err{};
        ASSERT_EQ(umas_build_edges_to(s.num_atoms, k, s.positions.data(), s.cell, s.pbc, 6.0, &part,
                                      &err),
                  0)
            << err.message;
        int expected = 0;
        while (expected < all.size() && all.list.target[expected] < k)
            expected++; // the full list is sorted by target
        ASSERT_EQ(part.num_edges, expected);
        std::vector<Key> want = keys(all.list), got = keys(part);
        want.resize(expected);
        EXPECT_EQ(got, want);
        if (expected > 0) { // (memcmp must not see the null vectors of an empty list)
            EXPECT_EQ(std::memcmp(part.vector, all.list.vector, sizeof(double) * 3 * expected), 0);
        }
        umas_edge_list_free(&part);
    }
    umas_edge_list e{};
    umas_error err{};
    EXPECT_NE(umas_build_edges_to(s.num_atoms, s.num_atoms + 1, s.positions.data(), s.cell, s.pbc,
                                  6.0, &e, &err),
              0);
    EXPECT_NE(std::string(err.message).find("num_targets"), std::string::npos) << err.message;
    EXPECT_NE(
        umas_build_edges_to(s.num_atoms, -1, s.positions.data(), s.cell, s.pbc, 6.0, &e, &err), 0);
}

TEST(BuildEdges, ZeroAtoms) {
    double cell[9] = {10, 0, 0, 0, 10, 0, 0, 0, 10};
    int pbc[3] = {1, 1, 1};
    umas_edge_list e;
    std::memset(&e, 0x5a, sizeof e);
    umas_error err{};
    ASSERT_EQ(umas_build_edges(0, nullptr, cell, pbc, 6.0, &e, &err), 0) << err.message;
    EXPECT_EQ(e.num_edges, 0);
    umas_edge_list_free(&e);
    EXPECT_EQ(e.source, nullptr);
    EXPECT_EQ(e.vector, nullptr);
}

TEST(BuildEdges, IsolatedAtomInBigBox) {
    Structure s;
    s.num_atoms = 1;
    s.positions = {3.0, 4.0, 5.0};
    s.cell[0] = s.cell[4] = s.cell[8] = 20.0;
    s.pbc[0] = s.pbc[1] = s.pbc[2] = 1;
    Edges edges;
    build(s, 6.0, edges);
    EXPECT_EQ(edges.size(), 0);
}

TEST(BuildEdges, Molecule) {
    const double nan = std::nan("");
    Structure s; // water; the cell is garbage and must be ignored
    s.num_atoms = 3;
    s.positions = {0, 0, 0.1173, 0, 0.7572, -0.4692, 0, -0.7572, -0.4692};
    for (double &c : s.cell) {
        c = nan;
    }
    Edges edges;
    build(s, 6.0, edges);
    EXPECT_EQ(edges.size(), 6);
    check_edges(s, edges.list, 6.0, 1e-12);
    for (int e = 0; e < edges.size(); e++) {
        for (int a = 0; a < 3; a++) {
            EXPECT_EQ(edges.list.cell_shift[3 * e + a], 0);
        }
    }
    // NULL pbc and NULL cell: a molecule too
    Edges again;
    umas_error err{};
    ASSERT_EQ(umas_build_edges(3, s.positions.data(), nullptr, nullptr, 6.0, &again.list, &err), 0)
        << err.message;
    EXPECT_EQ(again.size(), 6);
}

TEST(BuildEdges, Errors) {
    Structure s = make_fcc(2, 2, 2, 0.05, 1);
    umas_edge_list e{};
    umas_error err{};

    std::vector<double> bad = s.positions;
    bad[3 * 7 + 1] = std::nan("");
    EXPECT_NE(umas_build_edges(s.num_atoms, bad.data(), s.cell, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "atom 7"), nullptr) << err.message;
    EXPECT_EQ(e.num_edges, 0);
    EXPECT_EQ(e.source, nullptr);
    bad[3 * 7 + 1] = INFINITY;
    EXPECT_NE(umas_build_edges(s.num_atoms, bad.data(), s.cell, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "atom 7"), nullptr) << err.message;

    EXPECT_NE(umas_build_edges(-1, s.positions.data(), s.cell, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "num_atoms"), nullptr) << err.message;
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), s.cell, s.pbc, 0.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "cutoff"), nullptr) << err.message;
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), s.cell, s.pbc, -1, &e, &err), 0);
    EXPECT_NE(
        umas_build_edges(s.num_atoms, s.positions.data(), s.cell, s.pbc, std::nan(""), &e, &err),
        0);
    EXPECT_NE(umas_build_edges(s.num_atoms, nullptr, s.cell, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), s.cell, s.pbc, 6.0, nullptr, &err),
              0);
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), nullptr, s.pbc, 6.0, &e, &err), 0);

    // singular cell along periodic directions: c = a + b
    double singular[9] = {7, 0, 0, 1, 7, 0, 8, 7, 0};
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), singular, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "singular"), nullptr) << err.message;
    // ... but fine when c is not periodic (then it is ignored)
    int slab[3] = {1, 1, 0};
    Edges ok;
    EXPECT_EQ(
        umas_build_edges(s.num_atoms, s.positions.data(), singular, slab, 6.0, &ok.list, &err), 0)
        << err.message;
    double parallel[9] = {7, 0, 0, 14, 0, 0, 0, 0, 7};
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), parallel, slab, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "singular"), nullptr) << err.message;
    double zero_row[9] = {0, 0, 0, 0, 7, 0, 0, 0, 7};
    int wire[3] = {1, 0, 0};
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), zero_row, wire, 6.0, &e, &err), 0);
    double infinite[9] = {INFINITY, 0, 0, 0, 7, 0, 0, 0, 7};
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), infinite, s.pbc, 6.0, &e, &err), 0);

    // absurdly small cell for the cutoff: an error, not an exhausted machine
    double tiny[9] = {0.01, 0, 0, 0, 0.01, 0, 0, 0, 0.01};
    EXPECT_NE(umas_build_edges(s.num_atoms, s.positions.data(), tiny, s.pbc, 6.0, &e, &err), 0);
    EXPECT_NE(std::strstr(err.message, "too small"), nullptr) << err.message;
    EXPECT_EQ(e.source, nullptr);

    umas_edge_list_free(&e);
    umas_edge_list_free(nullptr);
}

// ------------------------------------------------------------------------------------------------
// umas_limit_neighbors

TEST(BuildEdges, AtomsOnTopOfEachOtherAreAnError) {
    // atom 2 at atom 0's place; atom 1 at a periodic image of atom 0 (one cell along x)
    const double cell[9] = {5, 0, 0, 0, 5, 0, 0, 0, 5};
    const int pbc[3] = {1, 1, 1};
    umas_edge_list edges = {};
    umas_error err = {};
    const double same_place[9] = {1, 1, 1, 3, 3, 3, 1, 1, 1};
    EXPECT_NE(umas_build_edges(3, same_place, cell, pbc, 4.0, &edges, &err), 0);
    EXPECT_NE(std::string(err.message).find("on top of each other"), std::string::npos)
        << err.message;
    const double image_place[6] = {1, 1, 1, 6, 1, 1};
    EXPECT_NE(umas_build_edges(2, image_place, cell, pbc, 4.0, &edges, &err), 0);
    EXPECT_NE(std::string(err.message).find("atoms 1 and 0"), std::string::npos) << err.message;
    EXPECT_EQ(err.atom[0], 1); // the atoms, for a caller to name them its own way
    EXPECT_EQ(err.atom[1], 0);
    umas_edge_list_free(&edges);
}

TEST(LimitNeighbors, FairchemRuleOnFcc108) {
    Structure s = load_structure(fs::path(data_dir()) / "tiny" / "a_cu_fcc_108");
    Edges edges;
    build(s, 6.0, edges);
    const int max_neighbors = 10;
    std::vector<Key> before = keys(edges.list);

    // expected per target: d2 <= (the (max+1)-th smallest d2) + 0.01
    std::vector<std::vector<double>> d2(s.num_atoms);
    for (int e = 0; e < edges.size(); e++) {
        const double *v = edges.list.vector + 3 * e;
        d2[edges.list.target[e]].push_back(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    }
    std::vector<int> expect_count(s.num_atoms);
    std::vector<Key> expect_keys;
    std::vector<double> threshold(s.num_atoms);
    for (int i = 0; i < s.num_atoms; i++) {
        std::vector<double> sorted = d2[i];
        std::sort(sorted.begin(), sorted.end());
        ASSERT_GT(sorted.size(), static_cast<size_t>(max_neighbors));
        threshold[i] = sorted[max_neighbors] + 0.01;
        expect_count[i] = static_cast<int>(std::count_if(
            sorted.begin(), sorted.end(), [&](double q) { return q <= threshold[i]; }));
        EXPECT_GE(expect_count[i], max_neighbors + 1);
    }
    for (int e = 0; e < edges.size(); e++) {
        const double *v = edges.list.vector + 3 * e;
        if (v[0] * v[0] + v[1] * v[1] + v[2] * v[2] <= threshold[edges.list.target[e]]) {
            expect_keys.push_back(before[e]);
        }
    }

    int cut = umas_limit_neighbors(&edges.list, s.num_atoms, max_neighbors);
    EXPECT_EQ(cut, s.num_atoms);
    EXPECT_EQ(neighbours_per_target(edges.list, s.num_atoms), expect_count);
    EXPECT_EQ(keys(edges.list), expect_keys); // the kept edges, in their original order
    check_edges(s, edges.list, 6.0, 1e-12);
    // the rattle makes the 12 nearest neighbours spread by more than 0.01 A^2: mostly 11 kept
    int eleven = static_cast<int>(std::count(expect_count.begin(), expect_count.end(), 11));
    EXPECT_GT(eleven, s.num_atoms / 2);
}

TEST(LimitNeighbors, NothingChangesBelowTheLimit) {
    Structure s = load_structure(fs::path(data_dir()) / "tiny" / "a_cu_fcc_108");
    Edges edges;
    build(s, 6.0, edges);
    std::vector<Key> before = keys(edges.list);
    std::vector<double> vectors(edges.list.vector, edges.list.vector + 3 * edges.size());
    int *source = edges.list.source;
    EXPECT_EQ(umas_limit_neighbors(&edges.list, s.num_atoms, 78), 0); // every atom has 78
    EXPECT_EQ(umas_limit_neighbors(&edges.list, s.num_atoms, 300), 0);
    EXPECT_EQ(umas_limit_neighbors(&edges.list, s.num_atoms, 0), 0); // fairchem: no limit
    EXPECT_EQ(edges.list.source, source);
    EXPECT_EQ(keys(edges.list), before);
    EXPECT_EQ(std::vector<double>(edges.list.vector, edges.list.vector + 3 * edges.size()),
              vectors);
}

// Hand-made list: the 0.01 A^2 tolerance on squared lengths, and atoms at the limit keep all.
TEST(LimitNeighbors, ToleranceAtATie) {
    // target 0: d2 = 1, 3.005, 2, 3, 3.02, 3.0099 (6 > 2 edges); target 1: 2 edges (= limit)
    const double d2[] = {1.0, 3.005, 2.0, 3.0, 3.02, 3.0099, 4.0, 9.0};
    const int target[] = {0, 0, 0, 0, 0, 0, 1, 1};
    const int n = 8;
    umas_edge_list e{};
    e.num_edges = n;
    e.source = static_cast<int *>(std::malloc(n * sizeof(int)));
    e.target = static_cast<int *>(std::malloc(n * sizeof(int)));
    e.cell_shift = static_cast<int *>(std::malloc(3 * n * sizeof(int)));
    e.vector = static_cast<double *>(std::malloc(3 * n * sizeof(double)));
    for (int k = 0; k < n; k++) {
        e.source[k] = 2 + k;
        e.target[k] = target[k];
        e.cell_shift[3 * k] = k;
        e.cell_shift[3 * k + 1] = e.cell_shift[3 * k + 2] = 0;
        e.vector[3 * k] = 0;
        e.vector[3 * k + 1] = std::sqrt(d2[k] / 2);
        e.vector[3 * k + 2] = -std::sqrt(d2[k] / 2);
    }
    EXPECT_EQ(umas_limit_neighbors(&e, 10, 2), 1);
    // 3rd nearest of atom 0 is 3.0: keep d2 <= 3.01 -> 1, 3.005, 2, 3, 3.0099; drop 3.02
    ASSERT_EQ(e.num_edges, 7);
    const int kept_sources[] = {2, 3, 4, 5, 7, 8, 9};
    for (int k = 0; k < 7; k++) {
        EXPECT_EQ(e.source[k], kept_sources[k]);
        EXPECT_EQ(e.cell_shift[3 * k], kept_sources[k] - 2);
    }
    // max_neighbors = 4: atom 0 (5 edges left) exceeds, but its 5th nearest (3.0099) + 0.01
    // keeps all five: nothing is cut
    EXPECT_EQ(umas_limit_neighbors(&e, 10, 4), 0);
    EXPECT_EQ(e.num_edges, 7);
    umas_edge_list_free(&e);
    EXPECT_EQ(e.num_edges, 0);
    EXPECT_EQ(e.vector, nullptr);
}

// ------------------------------------------------------------------------------------------------
// Extended XYZ

namespace {

// A temporary file removed at the end of the test.
struct TempFile {
    fs::path path;
    explicit TempFile(const std::string &text) {
        static int counter = 0;
        path =
            fs::temp_directory_path() /
            ("umas_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
             "_" + std::to_string(counter++) + "_" +
             std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + ".xyz");
        std::ofstream out(path, std::ios::binary);
        out << text;
    }
    ~TempFile() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

// Reads text as an extxyz file; returns the status and fills frame / message.
int read_text(const std::string &text, extxyz_frame *frame, std::string *message) {
    TempFile file(text);
    char err[512] = "";
    int status = extxyz_read(file.path.string().c_str(), frame, err, sizeof err);
    *message = err;
    return status;
}

} // namespace

TEST(ExtXyz, PeriodicWithLatticeAndPbc) {
    extxyz_frame f;
    std::string msg;
    ASSERT_EQ(read_text("2\n"
                        "Lattice=\"5.43 0 0 0 5.43 0 0 0 5.43\" Properties=species:S:1:pos:R:3 "
                        "pbc=\"T T F\" energy=-1.5\n"
                        "Si 0 0 0\n"
                        "Si 1.3575 1.3575 1.3575\n",
                        &f, &msg),
              0)
        << msg;
    EXPECT_EQ(f.num_atoms, 2);
    EXPECT_EQ(f.has_cell, 1);
    EXPECT_EQ(f.pbc[0], 1);
    EXPECT_EQ(f.pbc[1], 1);
    EXPECT_EQ(f.pbc[2], 0);
    EXPECT_EQ(f.cell[0], 5.43);
    EXPECT_EQ(f.cell[4], 5.43);
    EXPECT_EQ(f.cell[8], 5.43);
    EXPECT_EQ(f.cell[1], 0.0);
    EXPECT_EQ(f.atomic_numbers[0], 14);
    EXPECT_EQ(f.atomic_numbers[1], 14);
    EXPECT_EQ(f.positions[3], 1.3575);
    EXPECT_EQ(f.positions[5], 1.3575);
    extxyz_free(&f);
    EXPECT_EQ(f.positions, nullptr);
}

TEST(ExtXyz, MoleculeWithoutLattice) {
    extxyz_frame f;
    std::string msg;
    ASSERT_EQ(read_text("3\nwater molecule\nO 0 0 0.1173\nH 0 0.7572 -0.4692\r\n"
                        "H 0 -0.7572 -0.4692",
                        &f, &msg),
              0)
        << msg;
    EXPECT_EQ(f.num_atoms, 3);
    EXPECT_EQ(f.has_cell, 0);
    EXPECT_EQ(f.pbc[0] + f.pbc[1] + f.pbc[2], 0);
    EXPECT_EQ(f.atomic_numbers[0], 8);
    EXPECT_EQ(f.atomic_numbers[2], 1);
    EXPECT_EQ(f.positions[8], -0.4692);
    EXPECT_EQ(f.positions[4], 0.7572);
    extxyz_free(&f);
}

TEST(ExtXyz, ExtraColumnsQuotedValuesAndKeyCase) {
    extxyz_frame f;
    std::string msg;
    ASSERT_EQ(read_text("2\n"
                        "comment=\"hello world = 3\" lattice=\"4 0 0 0 4 0 0 0 4\" "
                        "is_relaxed "
                        "properties=Z:I:1:species:S:1:masses:R:1:pos:R:3:forces:R:3 "
                        "PBC=\"True False True\" config_type=bulk\n"
                        "29 Cu 63.5 0.5 1.0 1.5 0.1 0.2 0.3\n"
                        "8  O  16.0 2.5 -3.0 1e1 0 0 0\n",
                        &f, &msg),
              0)
        << msg;
    EXPECT_EQ(f.has_cell, 1);
    EXPECT_EQ(f.pbc[0], 1);
    EXPECT_EQ(f.pbc[1], 0);
    EXPECT_EQ(f.pbc[2], 1);
    EXPECT_EQ(f.cell[8], 4.0);
    EXPECT_EQ(f.atomic_numbers[0], 29);
    EXPECT_EQ(f.atomic_numbers[1], 8);
    EXPECT_EQ(f.positions[0], 0.5);
    EXPECT_EQ(f.positions[2], 1.5);
    EXPECT_EQ(f.positions[4], -3.0);
    EXPECT_EQ(f.positions[5], 10.0);
    extxyz_free(&f);

    // Z instead of species; pbc defaults to T T T with a Lattice
    ASSERT_EQ(read_text("1\nLattice=\"3 0 0 0 3 0 0 0 3\" Properties=Z:I:1:pos:R:3\n26 1 2 3\n", &f,
                        &msg),
              0)
        << msg;
    EXPECT_EQ(f.atomic_numbers[0], 26);
    EXPECT_EQ(f.pbc[0] + f.pbc[1] + f.pbc[2], 3);
    EXPECT_EQ(f.positions[2], 3.0);
    extxyz_free(&f);
}

TEST(ExtXyz, Errors) {
    extxyz_frame f;
    std::string msg;
    EXPECT_NE(read_text("2\n\nCu 0 0 0\nXx 1 1 1\n", &f, &msg), 0);
    EXPECT_NE(msg.find(":4:"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Xx"), std::string::npos) << msg;
    EXPECT_EQ(f.atomic_numbers, nullptr);

    EXPECT_NE(read_text("abc\n\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(msg.find(":1:"), std::string::npos) << msg;
    EXPECT_NE(read_text("-2\n\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(read_text("", &f, &msg), 0);
    EXPECT_NE(read_text("3\n\nCu 0 0 0\nCu 1 1 1\n", &f, &msg), 0);
    EXPECT_NE(msg.find("ends after 2 of 3"), std::string::npos) << msg;
    EXPECT_NE(read_text("1\n\nCu 0 nan 0\n", &f, &msg), 0);
    EXPECT_NE(msg.find(":3:"), std::string::npos) << msg;
    EXPECT_NE(read_text("1\n\nCu 0 0.1x 0\n", &f, &msg), 0);
    EXPECT_NE(read_text("1\n\nCu 0 0\n", &f, &msg), 0);
    EXPECT_NE(msg.find("columns"), std::string::npos) << msg;
    EXPECT_NE(read_text("1\nLattice=\"1 0 0 0 1 0 0 0\"\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(msg.find(":2:"), std::string::npos) << msg;
    EXPECT_NE(read_text("1\nLattice=\"1 0 0 0 1 0 0 0 1\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(read_text("1\npbc=\"T T T\"\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(read_text("1\nProperties=species:S:1:forces:R:3\nCu 0 0 0\n", &f, &msg), 0);
    EXPECT_NE(msg.find("pos"), std::string::npos) << msg;

    char err[256] = "";
    EXPECT_NE(extxyz_read("/nonexistent/umas/file.xyz", &f, err, sizeof err), 0);
    EXPECT_NE(std::string(err).find("/nonexistent/umas/file.xyz"), std::string::npos) << err;
}

// A file read with extxyz_read and turned into a graph: diamond Si, 8 atoms, 46 neighbours each
// within 6 A (shells at 2.35, 3.84, 4.50, 5.43, 5.92 A: 4 + 12 + 12 + 6 + 12).
TEST(ExtXyz, DiamondGraph) {
    const double a = 5.43;
    const double frac[8][3] = {{0, 0, 0},          {0.5, 0.5, 0},      {0.5, 0, 0.5},
                               {0, 0.5, 0.5},      {0.25, 0.25, 0.25}, {0.75, 0.75, 0.25},
                               {0.75, 0.25, 0.75}, {0.25, 0.75, 0.75}};
    std::string text = "8\nLattice=\"5.43 0 0 0 5.43 0 0 0 5.43\" pbc=\"T T T\"\n";
    for (const auto &f : frac) {
        char line[128];
        std::snprintf(line, sizeof line, "Si %.10f %.10f %.10f\n", f[0] * a, f[1] * a, f[2] * a);
        text += line;
    }
    extxyz_frame f;
    std::string msg;
    ASSERT_EQ(read_text(text, &f, &msg), 0) << msg;
    Edges edges;
    umas_error err{};
    ASSERT_EQ(umas_build_edges(f.num_atoms, f.positions, f.cell, f.pbc, 6.0, &edges.list, &err), 0)
        << err.message;
    EXPECT_EQ(edges.size(), 8 * 46);
    std::vector<int> count = neighbours_per_target(edges.list, f.num_atoms);
    for (int c : count) {
        EXPECT_EQ(c, 46);
    }
    extxyz_free(&f);
}
