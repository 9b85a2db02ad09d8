/* A second LD_PRELOAD library, as some engines bring (SGLang's torch_memory_saver wraps
 * cudaMalloc): it wraps cudaMalloc, says so on stderr, and forwards to the next
 * definition with dlsym(RTLD_NEXT). Chained with the cuvisor shim in either order, both
 * must see the call, and neither may loop. */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>

__attribute__((visibility("default"))) int cudaMalloc(void **p, size_t n) {
    static int (*next)(void **, size_t);
    if (!next) next = (int (*)(void **, size_t))dlsym(RTLD_NEXT, "cudaMalloc");
    fprintf(stderr, "other-preload: cudaMalloc %zu\n", n);
    return next ? next(p, n) : 999;
}
