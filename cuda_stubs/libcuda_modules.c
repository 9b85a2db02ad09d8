/* Fake libcuda.so.1: code objects. Libraries, modules, kernels and functions are opaque
 * handles: the fake never parses an image (it checks only that the image starts as a
 * fatbin, an ELF cubin or PTX text does), and a launch checks its configuration as the
 * driver does, counts, and runs nothing. Memory written by "kernels" therefore keeps its
 * old contents: tests assert allocation, copies and errors, never computed values.
 *
 * The runtime's path (NVIDIA's cudart, observed): a registered fatbin reaches the driver
 * only when one of its kernels is first used, as cuLibraryLoadData; then 12.x asks
 * cuLibraryGetModule + cuModuleGetFunction, 13.x cuLibraryGetKernel + cuKernelGetFunction;
 * then cuLaunchKernel. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "libcuda_internal.h"

#define LIB_MAGIC 0x4c494252u  /* a library; its module is the same object */
#define FUNC_MAGIC 0x46554e43u /* a function, which is also its kernel */

struct fg_function {
    uint32_t magic;
    struct fg_library *lib;
    char *name;
    int max_dynamic_shared; /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
    int carveout;           /* CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT */
    struct fg_function *next;
};

struct fg_library {
    uint32_t magic;
    int module_only; /* cuModuleLoadData: unloaded with cuModuleUnload, not cuLibraryUnload */
    struct fg_function *functions;
};

static pthread_mutex_t code_lock = PTHREAD_MUTEX_INITIALIZER;

#define FATBIN_MAGIC 0xba55ed50u
#define FATBIN_WRAPPER_MAGIC 0x466243b1u

/* A fatbin (or the runtime's wrapper of one), an ELF cubin, or PTX text. */
static int image_plausible(const void *image) {
    if (!image) return 0;
    const unsigned char *p = image;
    uint32_t magic;
    memcpy(&magic, p, sizeof magic);
    if (magic == FATBIN_MAGIC || magic == FATBIN_WRAPPER_MAGIC) return 1;
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') return 1;
    for (int i = 0; i < 8; i++) /* PTX: printable text */
        if (p[i] != '\n' && p[i] != '\t' && p[i] != '\r' && (p[i] < 0x20 || p[i] > 0x7e)) return 0;
    return 1;
}

static struct fg_library *library_of(const void *h) {
    const struct fg_library *l = h;
    return l && l->magic == LIB_MAGIC ? (struct fg_library *)l : NULL;
}

static struct fg_function *function_of(const void *h) {
    const struct fg_function *f = h;
    return f && f->magic == FUNC_MAGIC ? (struct fg_function *)f : NULL;
}

static CUresult load(struct fg_library **out, const void *image, int module_only) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!image_plausible(image)) return image ? CUDA_ERROR_INVALID_IMAGE : CUDA_ERROR_INVALID_VALUE;
    struct fg_library *l = calloc(1, sizeof *l);
    if (!l) return CUDA_ERROR_OUT_OF_MEMORY;
    *l = (struct fg_library){.magic = LIB_MAGIC, .module_only = module_only};
    *out = l;
    return CUDA_SUCCESS;
}

static CUresult unload(void *h, int module_only) {
    pthread_mutex_lock(&code_lock);
    struct fg_library *l = library_of(h);
    if (!l || l->module_only != module_only) {
        pthread_mutex_unlock(&code_lock);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    l->magic = 0; /* kept allocated, with its functions, so that stale handles stay detectable */
    for (struct fg_function *f = l->functions; f; f = f->next) f->magic = 0;
    pthread_mutex_unlock(&code_lock);
    return CUDA_SUCCESS;
}

/* The function of that name, made on first request: the fake cannot know which names an
 * image holds, so every name is found. */
static CUresult get_function(struct fg_function **out, void *h, const char *name) {
    if (!out || !name) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&code_lock);
    struct fg_library *l = library_of(h);
    CUresult rc = l ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    struct fg_function *f = NULL;
    if (l) {
        for (f = l->functions; f && strcmp(f->name, name) != 0; f = f->next) {}
        if (!f && (f = calloc(1, sizeof *f)) && !(f->name = strdup(name))) {
            free(f);
            f = NULL;
        }
        if (!f) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else if (f->magic != FUNC_MAGIC) {
            *f = (struct fg_function){.magic = FUNC_MAGIC, .lib = l, .name = f->name,
                                      .max_dynamic_shared = 48 << 10, .carveout = -1, .next = l->functions};
            l->functions = f;
        }
    }
    pthread_mutex_unlock(&code_lock);
    if (!rc) *out = f;
    return rc;
}

EXPORT CUresult cuModuleGetLoadingMode(int *mode) {
    COUNT(cuModuleGetLoadingMode);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!mode) return CUDA_ERROR_INVALID_VALUE;
    const char *v = getenv("CUDA_MODULE_LOADING");
    *mode = v && strcmp(v, "EAGER") == 0 ? 1 /* CU_MODULE_EAGER_LOADING */ : 2 /* LAZY, the default since 12.2 */;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLibraryLoadData(CUlibrary *lib, const void *code, void *jit_options, void **jit_values,
                                  unsigned n_jit, void *lib_options, void **lib_values, unsigned n_lib) {
    COUNT(cuLibraryLoadData);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if ((n_jit && (!jit_options || !jit_values)) || (n_lib && (!lib_options || !lib_values)))
        return CUDA_ERROR_INVALID_VALUE;
    return load((struct fg_library **)lib, code, 0);
}

EXPORT CUresult cuLibraryUnload(CUlibrary lib) {
    COUNT(cuLibraryUnload);
    CUresult rc = cu_initialized();
    return rc ? rc : unload(lib, 0);
}

EXPORT CUresult cuLibraryGetModule(CUmodule *mod, CUlibrary lib) {
    COUNT(cuLibraryGetModule);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!mod) return CUDA_ERROR_INVALID_VALUE;
    if (!library_of(lib)) return CUDA_ERROR_INVALID_HANDLE;
    *mod = (CUmodule)lib;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLibraryGetKernel(CUkernel *kernel, CUlibrary lib, const char *name) {
    COUNT(cuLibraryGetKernel);
    CUresult rc = cu_initialized();
    return rc ? rc : get_function((struct fg_function **)kernel, lib, name);
}

EXPORT CUresult cuKernelGetFunction(CUfunction *func, CUkernel kernel) {
    COUNT(cuKernelGetFunction);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!func) return CUDA_ERROR_INVALID_VALUE;
    if (!function_of(kernel)) return CUDA_ERROR_INVALID_HANDLE;
    *func = (CUfunction)kernel;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleLoadData(CUmodule *mod, const void *image) {
    COUNT(cuModuleLoadData);
    CUresult rc = cu_ready(NULL);
    return rc ? rc : load((struct fg_library **)mod, image, 1);
}

EXPORT CUresult cuModuleLoadDataEx(CUmodule *mod, const void *image, unsigned n, void *options, void **values) {
    COUNT(cuModuleLoadDataEx);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (n && (!options || !values)) return CUDA_ERROR_INVALID_VALUE;
    return load((struct fg_library **)mod, image, 1);
}

EXPORT CUresult cuModuleUnload(CUmodule mod) {
    COUNT(cuModuleUnload);
    CUresult rc = cu_initialized();
    return rc ? rc : unload(mod, 1);
}

EXPORT CUresult cuModuleGetFunction(CUfunction *func, CUmodule mod, const char *name) {
    COUNT(cuModuleGetFunction);
    CUresult rc = cu_ready(NULL);
    return rc ? rc : get_function((struct fg_function **)func, mod, name);
}

/* What cudaFuncGetAttributes reports: a small kernel compiled for sm_90. */
static CUresult function_attribute(int *value, int attrib, const struct fg_function *f) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES:
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES:
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *value = 0; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *value = 16; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION:
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = 90; break;
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *value = 0; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = f->max_dynamic_shared; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *value = f->carveout; break;
    case CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH:
    case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
    case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: *value = 0; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

/* Only the two writable attributes; the opt-in limit is the device's 227 KiB. */
static CUresult function_set_attribute(struct fg_function *f, int attrib, int value) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES && value >= 0 && value <= 232448)
        f->max_dynamic_shared = value;
    else if (attrib == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT && value >= -1 && value <= 100)
        f->carveout = value;
    else
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuFuncGetAttribute(int *value, int attrib, CUfunction func) {
    COUNT(cuFuncGetAttribute);
    CUresult rc = cu_initialized();
    return rc ? rc : function_attribute(value, attrib, function_of(func));
}

EXPORT CUresult cuFuncSetAttribute(CUfunction func, int attrib, int value) {
    COUNT(cuFuncSetAttribute);
    CUresult rc = cu_initialized();
    return rc ? rc : function_set_attribute(function_of(func), attrib, value);
}

EXPORT CUresult cuKernelGetAttribute(int *value, int attrib, CUkernel kernel, CUdevice dev) {
    COUNT(cuKernelGetAttribute);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    return function_attribute(value, attrib, function_of(kernel));
}

EXPORT CUresult cuKernelSetAttribute(int attrib, int value, CUkernel kernel, CUdevice dev) {
    COUNT(cuKernelSetAttribute);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    return function_set_attribute(function_of(kernel), attrib, value);
}

EXPORT CUresult cuFuncSetCacheConfig(CUfunction func, int config) {
    COUNT(cuFuncSetCacheConfig);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!function_of(func)) return CUDA_ERROR_INVALID_HANDLE;
    return config >= 0 && config <= 3 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* The configuration checks of the driver, against the H100's limits; then nothing runs. */
static CUresult launch(CUfunction func, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned shared, CUstream stream, void **params, void **extra) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    const struct fg_function *f = function_of(func);
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (!cu_valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    if (params && extra) return CUDA_ERROR_INVALID_VALUE;
    if (!gx || !gy || !gz || gx > 2147483647u || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
    if (!bx || !by || !bz || bx > 1024 || by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (shared > (unsigned)f->max_dynamic_shared) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, unsigned shared, CUstream s, void **params, void **extra) {
    COUNT(cuLaunchKernel);
    return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, extra);
}

/* CUlaunchConfig: the grid, the block, the shared memory, the stream, then attributes
 * (none of which changes what the fake checks). */
typedef struct {
    unsigned grid[3], block[3], shared;
    CUstream stream;
    void *attrs;
    unsigned n_attrs;
} launch_config;

static CUresult launch_ex(const launch_config *c, CUfunction f, void **params, void **extra) {
    if (!c || (c->n_attrs && !c->attrs)) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, c->grid[0], c->grid[1], c->grid[2], c->block[0], c->block[1], c->block[2], c->shared,
                  c->stream, params, extra);
}
EXPORT CUresult cuLaunchKernelEx(const void *c, CUfunction f, void **params, void **extra) {
    COUNT(cuLaunchKernelEx);
    return launch_ex(c, f, params, extra);
}
EXPORT CUresult cuLaunchKernelEx_ptsz(const void *c, CUfunction f, void **params, void **extra) {
    COUNT(cuLaunchKernelEx_ptsz);
    return launch_ex(c, f, params, extra);
}

/* Resident blocks a multiprocessor holds of a kernel with this block size: the H100's
 * limits of 32 blocks and 2048 threads (the fake's kernels use few registers). */
static CUresult occupancy(int *blocks, CUfunction func, int block_size, size_t shared) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    const struct fg_function *f = function_of(func);
    if (!blocks || block_size <= 0 || block_size > 1024) return CUDA_ERROR_INVALID_VALUE;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    int by_threads = 2048 / block_size, by_shared = shared ? (int)(233472 / shared) : 32;
    *blocks = by_threads < 32 ? by_threads : 32;
    if (by_shared < *blocks) *blocks = by_shared;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, CUfunction f, int block, size_t shared) {
    COUNT(cuOccupancyMaxActiveBlocksPerMultiprocessor);
    return occupancy(n, f, block, shared);
}
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *n, CUfunction f, int block, size_t shared,
                                                                     unsigned flags) {
    COUNT(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags);
    return flags > 1 ? CUDA_ERROR_INVALID_VALUE : occupancy(n, f, block, shared);
}

/* A TMA descriptor (CUtensorMap, 128 opaque bytes, 64-byte aligned), checked against the
 * documented limits and filled with the arguments: only the fake's no-op kernels read it. */
EXPORT CUresult cuTensorMapEncodeTiled(void *map, int type, cuuint32_t rank, void *address, const cuuint64_t *dims,
                                       const cuuint64_t *strides, const cuuint32_t *box,
                                       const cuuint32_t *element_strides, int interleave, int swizzle, int l2,
                                       int oob) {
    COUNT(cuTensorMapEncodeTiled);
    if (!map || (uintptr_t)map % 64 || !dims || !box || !element_strides || (rank > 1 && !strides))
        return CUDA_ERROR_INVALID_VALUE;
    if (type < 0 || type > 15 || rank < 1 || rank > 5 || (interleave && rank < 3)) return CUDA_ERROR_INVALID_VALUE;
    if (!address || (uintptr_t)address % (interleave ? 32 : 16)) return CUDA_ERROR_INVALID_VALUE;
    for (cuuint32_t i = 0; i < rank; i++) {
        if (!dims[i] || dims[i] > (1ull << 32) || !box[i] || box[i] > 256 || !element_strides[i] ||
            element_strides[i] > 8)
            return CUDA_ERROR_INVALID_VALUE;
        if (i + 1 < rank && (strides[i] % 16 || strides[i] >= (1ull << 40))) return CUDA_ERROR_INVALID_VALUE;
    }
    if (interleave < 0 || interleave > 2 || swizzle < 0 || swizzle > 7 || l2 < 0 || l2 > 3 || oob < 0 || oob > 1)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t *words = map;
    memset(map, 0, 128);
    words[0] = (uintptr_t)address;
    words[1] = (uint64_t)type | (uint64_t)rank << 8 | (uint64_t)interleave << 16 | (uint64_t)swizzle << 24 |
               (uint64_t)l2 << 32 | (uint64_t)oob << 40;
    for (cuuint32_t i = 0; i < rank; i++) words[2 + i] = dims[i] | (uint64_t)box[i] << 48;
    return CUDA_SUCCESS;
}

/* Dynamic shared memory a block may have when `blocks` blocks of `block_size` threads share
 * a multiprocessor: the H100's 228 KiB each (1 KiB reserved per block), at most the 227 KiB
 * a block may opt into. */
EXPORT CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t *bytes, CUfunction func, int blocks, int block_size) {
    COUNT(cuOccupancyAvailableDynamicSMemPerBlock);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!bytes || blocks <= 0 || block_size <= 0 || block_size > 1024) return CUDA_ERROR_INVALID_VALUE;
    if (!function_of(func)) return CUDA_ERROR_INVALID_HANDLE;
    if ((long)blocks * block_size > 2048 || blocks > 32) {
        *bytes = 0;
        return CUDA_SUCCESS;
    }
    size_t per_block = 233472 / (size_t)blocks;
    per_block = per_block > 1024 ? per_block - 1024 : 0;
    *bytes = per_block < 232448 ? per_block : 232448;
    return CUDA_SUCCESS;
}

/* The fake never parses an image, so it knows no global variable in one. */
EXPORT CUresult cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule mod, const char *name) {
    COUNT(cuModuleGetGlobal_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    (void)dptr;
    (void)bytes;
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    return library_of(mod) ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                    unsigned bz, unsigned shared, CUstream s, void **params, void **extra) {
    COUNT(cuLaunchKernel_ptsz);
    return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, extra);
}
