/* A scripted client of the CUDA runtime API only (linked against libcudart.so.12), used
 * by the tests as a black box. One line per command: "<command> <args> -> <cudaError_t> ...".
 *
 *   count                   cudaGetDeviceCount
 *   alloc SIZE              cudaMalloc             managed SIZE   cudaMallocManaged(global)
 *   pitch WIDTH HEIGHT      cudaMallocPitch        async SIZE     cudaMallocAsync(stream 0)
 *   free N / free-async N   cudaFree / cudaFreeAsync of the N-th allocation
 *   info                    cudaMemGetInfo: "free total"
 *   props                   cudaGetDeviceProperties: totalGlobalMem
 *   roundtrip N             cudaMemcpy a pattern in and out of allocation N
 *   ipc N                   cudaIpcGetMemHandle
 *   entry NAME              cudaGetDriverEntryPoint: status and the symbol returned (NAME@library)
 *   entry-version NAME VER  cudaGetDriverEntryPointByVersion
 *   entry-alloc SIZE        cuMemAlloc from cudaGetDriverEntryPoint, then cuMemFree from it
 *   error CODE              cudaGetErrorString */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe_util.h"

typedef int cudaError_t;
struct cudaDeviceProp { char name[256]; char uuid[16]; char luid[8]; unsigned mask; size_t totalGlobalMem; char rest[736]; };
typedef struct { char reserved[64]; } cudaIpcMemHandle_t;
cudaError_t cudaGetDeviceCount(int *);
cudaError_t cudaMalloc(void **, size_t);
cudaError_t cudaMallocManaged(void **, size_t, unsigned);
cudaError_t cudaMallocPitch(void **, size_t *, size_t, size_t);
cudaError_t cudaMallocAsync(void **, size_t, void *);
cudaError_t cudaFree(void *);
cudaError_t cudaFreeAsync(void *, void *);
cudaError_t cudaMemGetInfo(size_t *, size_t *);
cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp *, int);
cudaError_t cudaMemcpy(void *, const void *, size_t, int);
cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *, void *);
cudaError_t cudaGetDriverEntryPoint(const char *, void **, unsigned long long, int *);
cudaError_t cudaGetDriverEntryPointByVersion(const char *, void **, unsigned, unsigned long long, int *);
const char *cudaGetErrorString(cudaError_t);


static struct { void *p; size_t size; } slot[1024];
static int n_slots;

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *a1 = i + 1 < argc ? argv[i + 1] : "0", *a2 = i + 2 < argc ? argv[i + 2] : "0";
        cudaError_t r;
        if (!strcmp(c, "count")) {
            int n = -1;
            r = cudaGetDeviceCount(&n);
            printf("count -> %d %d\n", r, n);
        } else if (!strcmp(c, "alloc") || !strcmp(c, "managed") || !strcmp(c, "async")) {
            void *p = NULL;
            size_t n = size_arg(a1);
            r = c[0] == 'm' ? cudaMallocManaged(&p, n, 1) : c[1] == 'l' ? cudaMalloc(&p, n) : cudaMallocAsync(&p, n, NULL);
            printf("%s %s -> %d", c, a1, r);
            if (!r) {
                slot[n_slots] = (typeof(slot[0])){p, n};
                printf(" #%d", n_slots++);
            }
            printf("\n");
            i++;
        } else if (!strcmp(c, "pitch")) {
            void *p = NULL;
            size_t pitch = 0, h = size_arg(a2);
            r = cudaMallocPitch(&p, &pitch, size_arg(a1), h);
            printf("pitch %s %s -> %d", a1, a2, r);
            if (!r) {
                slot[n_slots] = (typeof(slot[0])){p, pitch * h};
                printf(" #%d pitch=%zu", n_slots++, pitch);
            }
            printf("\n");
            i += 2;
        } else if (!strcmp(c, "free") || !strcmp(c, "free-async")) {
            void *p = slot[atoi(a1)].p;
            r = c[4] ? cudaFreeAsync(p, NULL) : cudaFree(p);
            printf("%s %s -> %d\n", c, a1, r);
            i++;
        } else if (!strcmp(c, "info")) {
            size_t f = 0, t = 0;
            r = cudaMemGetInfo(&f, &t);
            printf("info -> %d %zu %zu\n", r, f, t);
        } else if (!strcmp(c, "props")) {
            struct cudaDeviceProp p;
            r = cudaGetDeviceProperties_v2(&p, 0);
            printf("props -> %d %zu\n", r, p.totalGlobalMem);
        } else if (!strcmp(c, "roundtrip")) {
            int k = atoi(a1);
            size_t n = slot[k].size < (1u << 20) ? slot[k].size : (1u << 20);
            unsigned char *in = malloc(n), *out = calloc(1, n);
            for (size_t j = 0; j < n; j++) in[j] = (unsigned char)(j * 131 + 7);
            r = cudaMemcpy(slot[k].p, in, n, 1);
            if (!r) r = cudaMemcpy(out, slot[k].p, n, 2);
            printf("roundtrip %s -> %d%s\n", a1, r, r ? "" : memcmp(in, out, n) ? " mismatch" : " ok");
            free(in);
            free(out);
            i++;
        } else if (!strcmp(c, "ipc")) {
            cudaIpcMemHandle_t h;
            printf("ipc %s -> %d\n", a1, cudaIpcGetMemHandle(&h, slot[atoi(a1)].p));
            i++;
        } else if (!strcmp(c, "entry") || !strcmp(c, "entry-version")) {
            void *fn = NULL;
            int st = 99;
            r = c[5] ? cudaGetDriverEntryPointByVersion(a1, &fn, (unsigned)atoi(a2), 0, &st)
                     : cudaGetDriverEntryPoint(a1, &fn, 0, &st);
            Dl_info info = {0};
            char sym[256] = "NULL";
            if (fn && dladdr(fn, &info) && info.dli_sname) {
                const char *lib = strrchr(info.dli_fname, '/');
                snprintf(sym, sizeof sym, "%s@%s", info.dli_sname, lib ? lib + 1 : info.dli_fname);
            }
            if (c[5]) printf("%s %s %s -> %d status=%d %s\n", c, a1, a2, r, st, sym);
            else printf("%s %s -> %d status=%d %s\n", c, a1, r, st, sym);
            i += c[5] ? 2 : 1;
        } else if (!strcmp(c, "entry-alloc")) {
            int (*alloc)(unsigned long long *, size_t) = NULL;
            int (*release)(unsigned long long) = NULL;
            unsigned long long p = 0;
            r = cudaGetDriverEntryPoint("cuMemAlloc", (void **)&alloc, 0, NULL);
            if (!r) r = cudaGetDriverEntryPoint("cuMemFree", (void **)&release, 0, NULL);
            int e = r ? -1 : alloc(&p, size_arg(a1));
            int f = e ? -1 : release(p);
            printf("entry-alloc %s -> %d alloc=%d free=%d\n", a1, r, e, f);
            i++;
        } else if (!strcmp(c, "error")) {
            printf("error %s -> %s\n", a1, cudaGetErrorString(atoi(a1)));
            i++;
        } else {
            printf("unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}
