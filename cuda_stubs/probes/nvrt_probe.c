/* A scripted client of NVIDIA's own CUDA runtime, used by the tests as a black box on the
 * fake driver: the runtime is libcudart.so.12/.so.13 from NVIDIA's wheels, opened from the
 * path in NVRT_LIB, or libcudart_static.a linked in (built by the test with -DSTATIC_RT and
 * -DPROPS_FN=<the runtime's cudaGetDeviceProperties symbol>). Declarations are written here
 * from the runtime API's documented signatures: no NVIDIA header is used.
 * One line per command: "<command> <args> -> <cudaError_t> ...".
 *
 *   version                 cudaRuntimeGetVersion and cudaDriverGetVersion: "runtime driver"
 *   count                   cudaGetDeviceCount
 *   props                   cudaGetDeviceProperties: totalGlobalMem, and cc/SMs by attribute
 *   set DEV                 cudaSetDevice
 *   info                    cudaMemGetInfo: "free total"
 *   alloc SIZE              cudaMalloc              managed SIZE  cudaMallocManaged(global)
 *   async SIZE              cudaMallocAsync on a stream of its own (made once)
 *   free N / free-async N   cudaFree / cudaFreeAsync of the N-th allocation
 *   roundtrip N             cudaMemcpy a pattern in and out of allocation N, then cudaMemset
 *   priority                cudaDeviceGetStreamPriorityRange: "least greatest"
 *   stream                  cudaStreamCreateWithPriority, cudaStreamSynchronize, cudaStreamDestroy
 *   event                   cudaEventCreate x2, record both, synchronize, elapsed time, destroy
 *   launch                  launch the kernel registered at start (as nvcc's host code does),
 *                           then with 2048 threads a block (too many): "-> rc, 2048 threads -> rc" 
 *   sync                    cudaDeviceSynchronize
 *   reset                   cudaDeviceReset
 *   last                    cudaGetLastError
 *   entry NAME              cudaGetDriverEntryPointByVersion (12.5+; else cudaGetDriverEntryPoint),
 *                           for the runtime's CUDA version: status and whether a function came */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe_util.h"

typedef int cudaError_t;
typedef struct { unsigned x, y, z; } dim3;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;

#define RT_FUNCS(X)                                                                       \
    X(cudaError_t, cudaRuntimeGetVersion, (int *))                                        \
    X(cudaError_t, cudaDriverGetVersion, (int *))                                         \
    X(cudaError_t, cudaGetDeviceCount, (int *))                                           \
    X(cudaError_t, cudaDeviceGetAttribute, (int *, int, int))                             \
    X(cudaError_t, cudaSetDevice, (int))                                                  \
    X(cudaError_t, cudaMemGetInfo, (size_t *, size_t *))                                  \
    X(cudaError_t, cudaMalloc, (void **, size_t))                                         \
    X(cudaError_t, cudaMallocManaged, (void **, size_t, unsigned))                        \
    X(cudaError_t, cudaMallocAsync, (void **, size_t, cudaStream_t))                      \
    X(cudaError_t, cudaFree, (void *))                                                    \
    X(cudaError_t, cudaFreeAsync, (void *, cudaStream_t))                                 \
    X(cudaError_t, cudaMemcpy, (void *, const void *, size_t, int))                       \
    X(cudaError_t, cudaMemset, (void *, int, size_t))                                     \
    X(cudaError_t, cudaDeviceGetStreamPriorityRange, (int *, int *))                      \
    X(cudaError_t, cudaStreamCreateWithPriority, (cudaStream_t *, unsigned, int))         \
    X(cudaError_t, cudaStreamSynchronize, (cudaStream_t))                                 \
    X(cudaError_t, cudaStreamDestroy, (cudaStream_t))                                     \
    X(cudaError_t, cudaEventCreate, (cudaEvent_t *))                                      \
    X(cudaError_t, cudaEventRecord, (cudaEvent_t, cudaStream_t))                          \
    X(cudaError_t, cudaEventSynchronize, (cudaEvent_t))                                   \
    X(cudaError_t, cudaEventElapsedTime, (float *, cudaEvent_t, cudaEvent_t))             \
    X(cudaError_t, cudaEventDestroy, (cudaEvent_t))                                       \
    X(cudaError_t, cudaLaunchKernel, (const void *, dim3, dim3, void **, size_t, cudaStream_t)) \
    X(cudaError_t, cudaDeviceSynchronize, (void))                                         \
    X(cudaError_t, cudaDeviceReset, (void))                                               \
    X(cudaError_t, cudaGetLastError, (void))                                              \
    X(void **, __cudaRegisterFatBinary, (void *))                                         \
    X(void, __cudaRegisterFatBinaryEnd, (void **))                                        \
    X(void, __cudaRegisterFunction, (void **, const char *, char *, const char *, int, void *, void *, void *, void *, int *))

#ifdef STATIC_RT
#define X(ret, name, args) ret name args;
RT_FUNCS(X)
#undef X
cudaError_t PROPS_FN(void *, int);
cudaError_t cudaGetDriverEntryPointByVersion(const char *, void **, unsigned, unsigned long long, int *);
#define RT(name) name
#define props_fn PROPS_FN
#define entry_by_version cudaGetDriverEntryPointByVersion
static cudaError_t (*entry_plain)(const char *, void **, unsigned long long, int *);
static void load_runtime(void) {}
#else
#define X(ret, name, args) static ret(*p_##name) args;
RT_FUNCS(X)
#undef X
static cudaError_t (*props_fn)(void *, int);
static cudaError_t (*entry_by_version)(const char *, void **, unsigned, unsigned long long, int *);
static cudaError_t (*entry_plain)(const char *, void **, unsigned long long, int *);
#define RT(name) p_##name
static void load_runtime(void) {
    const char *path = getenv("NVRT_LIB");
    void *h = path ? dlopen(path, RTLD_NOW | RTLD_GLOBAL) : NULL;
    if (!h) {
        fprintf(stderr, "nvrt_probe: cannot open NVRT_LIB=%s: %s\n", path ? path : "(unset)", dlerror());
        exit(2);
    }
#define X(ret, name, args)                                                               \
    if (!(p_##name = (ret(*) args)dlsym(h, #name))) {                                    \
        fprintf(stderr, "nvrt_probe: %s has no %s\n", path, #name);                      \
        exit(2);                                                                         \
    }
    RT_FUNCS(X)
#undef X
    props_fn = (cudaError_t(*)(void *, int))dlsym(h, "cudaGetDeviceProperties_v2");
    if (!props_fn) props_fn = (cudaError_t(*)(void *, int))dlsym(h, "cudaGetDeviceProperties");
    entry_by_version = (typeof(entry_by_version))dlsym(h, "cudaGetDriverEntryPointByVersion");
    entry_plain = (typeof(entry_plain))dlsym(h, "cudaGetDriverEntryPoint");
}
#endif

/* What nvcc's host code registers: a fatbin wrapper around a fatbin whose header the
 * runtime reads; the driver receives it opaque (cuLibraryLoadData) and never parses it. */
static const struct __attribute__((aligned(8))) {
    uint32_t magic;
    uint16_t version, header_size;
    uint64_t fat_size;
} fatbin = {0xba55ed50u, 1, 16, 0};
static struct { int magic, version; const void *data; void *filename; } fatbin_wrapper = {
    0x466243b1, 1, &fatbin, NULL};
static void kernel_stub(void) {} /* the host-side handle of the kernel */

static struct { void *p; size_t size; } slot[1024];
static int n_slots;
static cudaStream_t own_stream;

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    load_runtime();
    /* Before any other call, as nvcc's host code registers from a constructor (a function
     * registered later is unknown to a static runtime whose context exists: it would take
     * the stub for a CUkernel handle). */
    void **handle = RT(__cudaRegisterFatBinary)(&fatbin_wrapper);
    RT(__cudaRegisterFunction)(handle, (const char *)kernel_stub, (char *)"_Z6kernelv", "_Z6kernelv", -1, NULL,
                               NULL, NULL, NULL, NULL);
    RT(__cudaRegisterFatBinaryEnd)(handle);
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "0";
        cudaError_t r;
        if (!strcmp(c, "version")) {
            int rt = -1, drv = -1;
            r = RT(cudaRuntimeGetVersion)(&rt);
            cudaError_t r2 = RT(cudaDriverGetVersion)(&drv);
            printf("version -> %d %d %d %d\n", r, r2, rt, drv);
        } else if (!strcmp(c, "count")) {
            int n = -1;
            r = RT(cudaGetDeviceCount)(&n);
            printf("count -> %d %d\n", r, n);
        } else if (!strcmp(c, "props")) {
            static unsigned char prop[8192]; /* cudaDeviceProp, whose layout differs by version */
            r = props_fn(prop, 0);
            size_t total;
            memcpy(&total, prop + 256 + 16 + 8 + 8, sizeof total); /* after name, uuid, luid, mask */
            int major = -1, minor = -1, sms = -1;
            RT(cudaDeviceGetAttribute)(&major, 75, 0);
            RT(cudaDeviceGetAttribute)(&minor, 76, 0);
            RT(cudaDeviceGetAttribute)(&sms, 16, 0);
            printf("props -> %d %zu %d.%d %d\n", r, total, major, minor, sms);
        } else if (!strcmp(c, "set")) {
            r = RT(cudaSetDevice)(atoi(a1));
            printf("set %s -> %d\n", a1, r);
            i++;
        } else if (!strcmp(c, "info")) {
            size_t f = 0, t = 0;
            r = RT(cudaMemGetInfo)(&f, &t);
            printf("info -> %d %zu %zu\n", r, f, t);
        } else if (!strcmp(c, "alloc") || !strcmp(c, "managed") || !strcmp(c, "async")) {
            void *p = NULL;
            size_t n = size_arg(a1);
            if (c[1] == 's' && !own_stream) RT(cudaStreamCreateWithPriority)(&own_stream, 1, 0);
            r = c[0] == 'm' ? RT(cudaMallocManaged)(&p, n, 1)
                : c[1] == 'l' ? RT(cudaMalloc)(&p, n)
                              : RT(cudaMallocAsync)(&p, n, own_stream);
            printf("%s %s -> %d", c, a1, r);
            if (!r) {
                slot[n_slots] = (typeof(slot[0])){p, n};
                printf(" #%d", n_slots++);
            }
            printf("\n");
            i++;
        } else if (!strcmp(c, "free") || !strcmp(c, "free-async")) {
            void *p = slot[atoi(a1)].p;
            r = c[4] ? RT(cudaFreeAsync)(p, own_stream) : RT(cudaFree)(p);
            if (c[4] && !r) r = RT(cudaStreamSynchronize)(own_stream);
            printf("%s %s -> %d\n", c, a1, r);
            i++;
        } else if (!strcmp(c, "roundtrip")) {
            int n = atoi(a1);
            size_t len = slot[n].size < 4096 ? slot[n].size : 4096;
            unsigned char in[4096], out[4096];
            for (size_t k = 0; k < len; k++) in[k] = (unsigned char)(k * 7 + n);
            r = RT(cudaMemcpy)(slot[n].p, in, len, 1 /* cudaMemcpyHostToDevice */);
            if (!r) r = RT(cudaMemcpy)(out, slot[n].p, len, 2 /* cudaMemcpyDeviceToHost */);
            int same = !r && memcmp(in, out, len) == 0;
            if (!r) r = RT(cudaMemset)(slot[n].p, 0xab, len);
            if (!r) r = RT(cudaMemcpy)(out, slot[n].p, len, 2);
            int set = !r && len && out[0] == 0xab && out[len - 1] == 0xab;
            printf("roundtrip %s -> %d %s\n", a1, r, same && set ? "ok" : "differs");
            i++;
        } else if (!strcmp(c, "priority")) {
            int least = 99, greatest = 99;
            r = RT(cudaDeviceGetStreamPriorityRange)(&least, &greatest);
            printf("priority -> %d %d %d\n", r, least, greatest);
        } else if (!strcmp(c, "stream")) {
            cudaStream_t s = NULL;
            r = RT(cudaStreamCreateWithPriority)(&s, 1 /* cudaStreamNonBlocking */, -1);
            if (!r) r = RT(cudaStreamSynchronize)(s);
            if (!r) r = RT(cudaStreamDestroy)(s);
            printf("stream -> %d\n", r);
        } else if (!strcmp(c, "event")) {
            cudaEvent_t a = NULL, b = NULL;
            float ms = -1;
            r = RT(cudaEventCreate)(&a);
            if (!r) r = RT(cudaEventCreate)(&b);
            if (!r) r = RT(cudaEventRecord)(a, NULL);
            if (!r) r = RT(cudaEventRecord)(b, NULL);
            if (!r) r = RT(cudaEventSynchronize)(b);
            if (!r) r = RT(cudaEventElapsedTime)(&ms, a, b);
            if (!r) r = RT(cudaEventDestroy)(a);
            if (!r) r = RT(cudaEventDestroy)(b);
            printf("event -> %d %s\n", r, ms >= 0 ? "timed" : "untimed");
        } else if (!strcmp(c, "launch")) {
            dim3 grid = {2, 1, 1}, block = {128, 1, 1}, huge = {2048, 1, 1};
            r = RT(cudaLaunchKernel)((const void *)kernel_stub, grid, block, NULL, 0, NULL);
            cudaError_t bad = RT(cudaLaunchKernel)((const void *)kernel_stub, grid, huge, NULL, 0, NULL);
            cudaError_t last = RT(cudaGetLastError)();
            printf("launch -> %d, 2048 threads -> %d, last %d\n", r, bad, last);
        } else if (!strcmp(c, "sync")) {
            printf("sync -> %d\n", RT(cudaDeviceSynchronize)());
        } else if (!strcmp(c, "reset")) {
            own_stream = NULL;
            printf("reset -> %d\n", RT(cudaDeviceReset)());
        } else if (!strcmp(c, "last")) {
            printf("last -> %d\n", RT(cudaGetLastError)());
        } else if (!strcmp(c, "entry")) {
            void *fn = NULL;
            int status = -1;
            int version = 0;
            RT(cudaRuntimeGetVersion)(&version);
            r = entry_by_version ? entry_by_version(a1, &fn, (unsigned)version, 0, &status)
                                 : entry_plain(a1, &fn, 0, &status);
            printf("entry %s -> %d status=%d %s\n", a1, r, status, fn ? "found" : "null");
            i++;
        } else {
            fprintf(stderr, "nvrt_probe: unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}
