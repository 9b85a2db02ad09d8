/* The real-GPU kit's CUDA runtime client: the same script language and output as the
 * fake GPU's runtime probe, for what the kit needs, declared by hand so that one source
 * builds against NVIDIA's runtime (nvcc: static cudart by default, or -cudart shared)
 * and against the fake libcudart.so.12 (gcc).
 *
 *   info        cudaMemGetInfo: "info -> ERR FREE TOTAL"
 *   alloc SIZE  cudaMalloc:     "alloc SIZE -> ERR" (the memory is kept) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;
cudaError_t cudaMemGetInfo(size_t *, size_t *);
cudaError_t cudaMalloc(void **, size_t);
const char *cudaGetErrorString(cudaError_t);

static size_t size_arg(const char *s) {
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (!strcmp(end, "K") || !strcmp(end, "KiB")) n <<= 10;
    else if (!strcmp(end, "M") || !strcmp(end, "MiB")) n <<= 20;
    else if (!strcmp(end, "G") || !strcmp(end, "GiB")) n <<= 30;
    else if (*end) { fprintf(stderr, "bad size %s\n", s); exit(2); }
    return (size_t)n;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "info")) {
            size_t free_b = 0, total = 0;
            cudaError_t r = cudaMemGetInfo(&free_b, &total);
            printf("info -> %d %zu %zu\n", r, free_b, total);
        } else if (!strcmp(argv[i], "alloc") && i + 1 < argc) {
            void *p = NULL;
            cudaError_t r = cudaMalloc(&p, size_arg(argv[++i]));
            printf("alloc %s -> %d%s%s\n", argv[i], r, r ? " " : "", r ? cudaGetErrorString(r) : "");
        } else {
            fprintf(stderr, "unknown command %s\n", argv[i]);
            return 2;
        }
    }
    return 0;
}
