/* Fake libcuda.so.1: the table behind cuGetProcAddress. It is in a translation unit of its
 * own because it names every entry point without its prototype. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libcuda_internal.h"

#define ENTRY(sym, base, ver, pt) extern void sym(void);
#include "libcuda_entries.h"
#undef ENTRY

static const struct { const char *base; int version; int per_thread; void (*fn)(void); } proc_table[] = {
#define ENTRY(sym, base, ver, pt) {#base, ver, pt, sym},
#include "libcuda_entries.h"
#undef ENTRY
};

CUresult cu_get_proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *status) {
    if (!symbol || !pfn || flags > CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
        return CUDA_ERROR_INVALID_VALUE;
    if (version > cu_driver_version()) return CUDA_ERROR_INVALID_VALUE;
    int want_pt = flags == CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    int found = 0, best = -1, best_pt = -1;
    for (size_t i = 0; i < sizeof proc_table / sizeof proc_table[0]; i++) {
        if (strcmp(proc_table[i].base, symbol) != 0) continue;
        found = 1;
        if (proc_table[i].version > version) continue;
        int *slot = proc_table[i].per_thread ? &best_pt : &best;
        if (*slot < 0 || proc_table[i].version > proc_table[*slot].version) *slot = (int)i;
    }
    if (want_pt && best_pt >= 0) best = best_pt; /* per-thread preferred, legacy the fallback */
    *pfn = best >= 0 ? (void *)proc_table[best].fn : NULL;
    const char *trace = getenv("FAKE_CUDA_TRACE");
    if (!found && trace && *trace && strcmp(trace, "0") != 0)
        fprintf(stderr, "fake-cuda: cuGetProcAddress: %s (version %d) is not in the fake\n", symbol, version);
    if (status)
        *status = best >= 0 ? CU_GET_PROC_ADDRESS_SUCCESS
                  : found   ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                            : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_SUCCESS;
}

