/* Timing client for docs/BENCHMARKS.md (driven by examples/bench_shim.rs):
 *   bench THREADS ITERS SIZE [pairs|info|both]
 * THREADS threads each time ITERS cuMemAlloc_v2 + cuMemFree_v2 pairs of SIZE bytes
 * ("pairs"), and/or ITERS cuMemGetInfo_v2 calls ("info"). Prints the mean nanoseconds
 * per operation over the threads:
 *   alloc_free_ns <n>
 *   mem_get_info_ns <n> */
#include <string.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../cuda_types.h"
#include "probe_util.h"

CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);

static CUcontext ctx;
static int iters, do_pairs = 1, do_info = 1;
static size_t size;
static pthread_barrier_t start;
static double alloc_ns_sum, info_ns_sum;
static pthread_mutex_t sum_lock = PTHREAD_MUTEX_INITIALIZER;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void fail(const char *what, CUresult r) {
    fprintf(stderr, "bench: %s failed: %d\n", what, r);
    exit(1);
}

static void *worker(void *arg) {
    (void)arg;
    CUresult r = cuCtxSetCurrent(ctx);
    if (r) fail("cuCtxSetCurrent", r);
    CUdeviceptr p;
    size_t f, t;
    for (int i = 0; i < 100; i++) { /* warm up */
        if ((r = cuMemAlloc_v2(&p, size)) || (r = cuMemFree_v2(p))) fail("warm-up", r);
    }
    pthread_barrier_wait(&start);
    double t0 = now_ns();
    for (int i = 0; i < iters && do_pairs; i++) {
        if ((r = cuMemAlloc_v2(&p, size))) fail("cuMemAlloc_v2", r);
        if ((r = cuMemFree_v2(p))) fail("cuMemFree_v2", r);
    }
    double t1 = now_ns();
    pthread_barrier_wait(&start);
    double t2 = now_ns();
    for (int i = 0; i < iters && do_info; i++)
        if ((r = cuMemGetInfo_v2(&f, &t))) fail("cuMemGetInfo_v2", r);
    double t3 = now_ns();
    pthread_mutex_lock(&sum_lock);
    alloc_ns_sum += (t1 - t0) / iters;
    info_ns_sum += (t3 - t2) / iters;
    pthread_mutex_unlock(&sum_lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: bench THREADS ITERS SIZE [pairs|info|both]\n");
        return 2;
    }
    if (argc == 5) {
        do_pairs = !strcmp(argv[4], "pairs") || !strcmp(argv[4], "both");
        do_info = !strcmp(argv[4], "info") || !strcmp(argv[4], "both");
    }
    int threads = atoi(argv[1]);
    iters = atoi(argv[2]);
    size = size_arg(argv[3]);
    CUresult r;
    if ((r = cuInit(0))) fail("cuInit", r);
    if ((r = cuDevicePrimaryCtxRetain(&ctx, 0))) fail("cuDevicePrimaryCtxRetain", r);
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    pthread_t t[64];
    for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < threads && i < 64; i++) pthread_join(t[i], NULL);
    printf("alloc_free_ns %.1f\nmem_get_info_ns %.1f\n", alloc_ns_sum / threads, info_ns_sum / threads);
    return 0;
}
