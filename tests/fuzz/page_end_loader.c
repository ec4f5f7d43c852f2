/* page_end_loader.c - loads model files with an unmapped (PROT_NONE) page right after the file
 * mapping, so a read past the end of a file whose size is a multiple of the page size faults
 * instead of hitting whatever memory happens to follow. Linux places new mappings top-down, so
 * a one-page PROT_NONE mapping made just before umas_model_load usually ends up directly above
 * the file's mapping (the program prints both addresses to check).
 *
 *   clang -g -O1 -Icore tests/fuzz/page_end_loader.c $(find core -name '*.c') \
 *         $(pkg-config --cflags --libs openblas libcjson) -lm -o /tmp/page_end_loader
 *   /tmp/page_end_loader tests/fuzz/crashes/loader-segv-with-cjson-1.7.17-page-end.safetensors
 *
 * With the system cJSON (Debian 1.7.15-1+deb12u4, or upstream >= 1.7.18) this prints a clean
 * error. Linked against upstream cJSON 1.7.15..1.7.17 instead (-I<dir> <dir>/cJSON.c, no
 * libcjson), it dies with SIGSEGV: cJSON_ParseWithLength reads one byte past the header.
 */
#define _GNU_SOURCE
#include "model.h"
#include "umas.h"

#include <stdio.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    int failures = 0;
    for (int i = 1; i < argc; i++) {
        void *guard = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        umas_error err;
        umas_model *m = umas_model_load(argv[i], &err);
        printf("%s: guard page %p: %s\n", argv[i], guard, m ? "loaded" : err.message);
        if (m)
            printf("  mapping %p..%p\n", m->mapping, (char *)m->mapping + m->mapping_size);
        failures += !m;
        umas_model_free(m);
        munmap(guard, 4096);
    }
    return failures ? 1 : 0;
}
