/* Fake libcuda.so.1: the table behind cuGetProcAddress. It is in a translation unit of its
 * own because it names every entry point without its prototype. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h> /* strdup */
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

/* FAKE_CUDA_TRACE=calls: a name the fake does not have gets a trampoline that says, when
 * it is called, which function the caller wanted (a debugging aid: the caller then sees a
 * function where the driver would give none). Up to 500 names. */
#define TRAMP_BASE 100
#define TRAMP_COUNT 500
static const char *tramp_names[TRAMP_COUNT];
static int n_tramps;
static pthread_mutex_t tramp_lock = PTHREAD_MUTEX_INITIALIZER;

#define T(n)                                                                                    \
    static CUresult tramp_##n(void) {                                                           \
        fprintf(stderr, "fake-cuda: %s was called; the fake does not have it (answered "        \
                        "CUDA_ERROR_NOT_SUPPORTED)\n", tramp_names[n - TRAMP_BASE]);            \
        return CUDA_ERROR_NOT_SUPPORTED;                                                        \
    }
#define T10(p) T(p##0) T(p##1) T(p##2) T(p##3) T(p##4) T(p##5) T(p##6) T(p##7) T(p##8) T(p##9)
#define T100(p) T10(p##0) T10(p##1) T10(p##2) T10(p##3) T10(p##4) T10(p##5) T10(p##6) T10(p##7) T10(p##8) T10(p##9)
T100(1) T100(2) T100(3) T100(4) T100(5)
#undef T
#define T(n) tramp_##n,
static CUresult (*const tramps[TRAMP_COUNT])(void) = {T100(1) T100(2) T100(3) T100(4) T100(5)};
#undef T

static void *trampoline(const char *symbol) {
    pthread_mutex_lock(&tramp_lock);
    int i = 0;
    while (i < n_tramps && strcmp(tramp_names[i], symbol) != 0) i++;
    if (i == n_tramps && n_tramps < TRAMP_COUNT) tramp_names[n_tramps++] = strdup(symbol);
    pthread_mutex_unlock(&tramp_lock);
    return i < n_tramps && tramp_names[i] ? (void *)tramps[i] : NULL;
}

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
    if (!found && cu_trace_level()) {
        fprintf(stderr, "fake-cuda: cuGetProcAddress: %s (version %d) is not in the fake\n", symbol, version);
        if (cu_trace_level() == 2 && (*pfn = trampoline(symbol))) {
            if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
            return CUDA_SUCCESS;
        }
    }
    if (status)
        *status = best >= 0 ? CU_GET_PROC_ADDRESS_SUCCESS
                  : found   ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                            : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_SUCCESS;
}

