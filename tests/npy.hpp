// npy.hpp - header-only reader for NumPy .npy files (format versions 1, 2 and 3), for the tests.
//
// Supports little-endian arrays (C or Fortran order; values come back in C order) of dtype <f8,
// <f4, <i8, <i4, <i2, |i1, <u8, <u4, <u2, |u1 and |b1 (bool); the values are converted to double:
//
//     NpyArray a = npy_load("tests/data/tiny/a_cu_fcc_108/edge_index.npy");   // int64 [2][E]
//     double src = a.values[0 * a.shape[1] + e];
//
// Any problem (missing file, bad header, big-endian, short data) throws
// std::runtime_error naming the path.
#ifndef UMAS_TESTS_NPY_HPP
#define UMAS_TESTS_NPY_HPP

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

struct NpyArray {
    std::vector<size_t> shape;  // e.g. {2, E}; empty for a scalar
    std::vector<double> values; // [product of shape], C order
    std::string dtype;          // descr as in the file, e.g. "<i8"

    size_t size() const {
        return values.size();
    }
    double operator[](size_t i) const {
        return values[i];
    }
    // Element (i, j) of a 2-D array.
    double at(size_t i, size_t j) const {
        return values[i * shape[1] + j];
    }
};

namespace npy_detail {

inline std::runtime_error error(const std::string &path, const std::string &what) {
    return std::runtime_error("npy_load(" + path + "): " + what);
}

// Value of 'key' in the header dict, up to the next ',' or '}' (or the closing ')' of a tuple).
inline std::string dict_value(const std::string &header, const std::string &key,
                              const std::string &path) {
    size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) {
        throw error(path, "header has no '" + key + "': " + header);
    }
    size_t colon = header.find(':', k);
    if (colon == std::string::npos) {
        throw error(path, "bad header: " + header);
    }
    size_t begin = header.find_first_not_of(" ", colon + 1);
    if (begin == std::string::npos) {
        throw error(path, "bad header: " + header);
    }
    size_t end;
    if (header[begin] == '(') {
        end = header.find(')', begin);
        if (end == std::string::npos) {
            throw error(path, "bad shape in header: " + header);
        }
        return header.substr(begin, end - begin + 1);
    }
    end = header.find_first_of(",}", begin);
    if (end == std::string::npos) {
        throw error(path, "bad header: " + header);
    }
    return header.substr(begin, end - begin);
}

template <typename T> void convert(const std::vector<char> &raw, std::vector<double> &out) {
    for (size_t i = 0; i < out.size(); i++) {
        T v;
        std::memcpy(&v, raw.data() + i * sizeof(T), sizeof(T));
        out[i] = static_cast<double>(v);
    }
}

} // namespace npy_detail

inline NpyArray npy_load(const std::string &path) {
    using npy_detail::error;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw error(path, "cannot open the file");
    }
    char magic[8];
    if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
        throw error(path, "not a .npy file (bad magic)");
    }
    const int major = static_cast<unsigned char>(magic[6]);
    size_t header_len = 0;
    if (major == 1) {
        unsigned char b[2];
        if (!in.read(reinterpret_cast<char *>(b), 2)) {
            throw error(path, "truncated header");
        }
        header_len = b[0] | (size_t(b[1]) << 8);
    } else if (major == 2 || major == 3) {
        unsigned char b[4];
        if (!in.read(reinterpret_cast<char *>(b), 4)) {
            throw error(path, "truncated header");
        }
        header_len = b[0] | (size_t(b[1]) << 8) | (size_t(b[2]) << 16) | (size_t(b[3]) << 24);
    } else {
        throw error(path, "unsupported format version " + std::to_string(major));
    }
    std::string header(header_len, '\0');
    if (!in.read(&header[0], static_cast<std::streamsize>(header_len))) {
        throw error(path, "truncated header");
    }

    NpyArray a;
    std::string descr = npy_detail::dict_value(header, "descr", path);
    if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) {
        throw error(path, "unsupported descr " + descr);
    }
    a.dtype = descr.substr(1, descr.size() - 2);
    std::string fortran = npy_detail::dict_value(header, "fortran_order", path);
    bool fortran_order = fortran.find("True") != std::string::npos;
    if (!fortran_order && fortran.find("False") == std::string::npos) {
        throw error(path, "bad fortran_order " + fortran);
    }
    std::string shape = npy_detail::dict_value(header, "shape", path);
    size_t count = 1;
    for (size_t p = 1; p < shape.size();) {
        size_t q = shape.find_first_of(",)", p);
        std::string item = shape.substr(p, q - p);
        size_t first = item.find_first_not_of(' ');
        if (first != std::string::npos) {
            size_t dim = 0;
            try {
                dim = std::stoull(item.substr(first));
            } catch (const std::exception &) {
                throw error(path, "bad shape " + shape);
            }
            a.shape.push_back(dim);
            count *= dim;
        }
        if (q == std::string::npos || shape[q] == ')') {
            break;
        }
        p = q + 1;
    }

    size_t item_size;
    const std::string &t = a.dtype;
    if (t == "<f8" || t == "<i8" || t == "<u8") {
        item_size = 8;
    } else if (t == "<f4" || t == "<i4" || t == "<u4") {
        item_size = 4;
    } else if (t == "<i2" || t == "<u2") {
        item_size = 2;
    } else if (t == "|b1" || t == "|i1" || t == "|u1") {
        item_size = 1;
    } else {
        throw error(path, "unsupported dtype '" + t + "' (little-endian numbers or bool only)");
    }
    std::vector<char> raw(count * item_size);
    if (count > 0 && !in.read(raw.data(), static_cast<std::streamsize>(raw.size()))) {
        throw error(path, "data shorter than the shape says (" + std::to_string(count) +
                              " items of " + t + ")");
    }
    a.values.resize(count);
    if (t == "<f8") {
        npy_detail::convert<double>(raw, a.values);
    } else if (t == "<f4") {
        npy_detail::convert<float>(raw, a.values);
    } else if (t == "<i8") {
        npy_detail::convert<int64_t>(raw, a.values);
    } else if (t == "<u8") {
        npy_detail::convert<uint64_t>(raw, a.values);
    } else if (t == "<i4") {
        npy_detail::convert<int32_t>(raw, a.values);
    } else if (t == "<u4") {
        npy_detail::convert<uint32_t>(raw, a.values);
    } else if (t == "<i2") {
        npy_detail::convert<int16_t>(raw, a.values);
    } else if (t == "<u2") {
        npy_detail::convert<uint16_t>(raw, a.values);
    } else if (t == "|i1") {
        npy_detail::convert<int8_t>(raw, a.values);
    } else if (t == "|u1") {
        npy_detail::convert<uint8_t>(raw, a.values);
    } else { // |b1
        for (size_t i = 0; i < count; i++) {
            a.values[i] = raw[i] != 0 ? 1.0 : 0.0;
        }
    }
    if (fortran_order && a.shape.size() > 1) { // column-major -> row-major
        std::vector<double> c_order(count);
        std::vector<size_t> index(a.shape.size(), 0);
        for (size_t f = 0; f < count; f++) { // index: f's multi-index, first axis fastest
            size_t c = 0;
            for (size_t d = 0; d < a.shape.size(); d++)
                c = c * a.shape[d] + index[d];
            c_order[c] = a.values[f];
            for (size_t d = 0; d < a.shape.size() && ++index[d] == a.shape[d]; d++)
                index[d] = 0;
        }
        a.values = c_order;
    }
    return a;
}

#endif // UMAS_TESTS_NPY_HPP
