/* Fake libcuda.so.1: device memory. Every allocation is backed by host memory so that
 * copies and memsets round-trip. Device addresses of device-only memory are the host
 * backing address plus DEV_OFFSET, which is not a canonical x86-64 address: a program
 * that dereferences a device pointer on the host crashes, as it would on a real GPU.
 * Managed and pinned host memory are host-accessible, so their addresses are the host
 * addresses. One lock (the device-state lock) guards everything here. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libcuda_internal.h"

#define DEV_OFFSET (1ull << 48)
#define GRANULARITY FG_BLOCK      /* VMM granularity and pool reservation unit: 2 MiB */
#define PITCH_ALIGN 512ull        /* cuMemAllocPitch rounds rows up to this */
#define ARRAY_ALIGN (64ull << 10) /* arrays occupy whole 64 KiB pages */

enum akind { A_DEVICE = 1, A_PITCH, A_LEGACY, A_MANAGED, A_POOL, A_VA, A_HOST, A_IPC };
static const char *const kind_names[] = {"", "device", "pitch", "legacy", "managed", "pool", "va", "host", "ipc"};

struct alloc {
    uint64_t dptr, size;
    char *host;           /* backing */
    uint64_t map_len;     /* length of the host mapping; 0: heap backing (small allocations) */
    enum akind kind;
    int dev;
    uint32_t range;       /* device-state range, or FG_NO_RANGE */
    struct fg_pool *pool;
    CUcontext ctx;
    int ipc_fd;           /* exported (cuIpcGetMemHandle): the memfd now backing it; else -1 */
    uint64_t ipc_serial;  /* exported: which export of this process (also in A_IPC: the source's) */
    char *reserve;        /* exported heap block: kept so that no allocation reuses its address */
    int32_t src_pid;      /* A_IPC: the exporter and its address, and the opens outstanding */
    uint64_t src_dptr;
    int refs;
};
static struct alloc *allocs; /* sorted by dptr */
static size_t n_allocs, cap_allocs;

#define ROUND_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/* ---- the allocation table (lock held) ------------------------------------------------ */

/* Index of the last allocation whose dptr <= p, or -1. */
static long floor_index(uint64_t p) {
    long lo = 0, hi = (long)n_allocs - 1, ans = -1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        if (allocs[mid].dptr <= p) { ans = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return ans;
}

static struct alloc *find_base(uint64_t p) {
    long i = floor_index(p);
    return i >= 0 && allocs[i].dptr == p ? &allocs[i] : NULL;
}

static struct alloc *find_containing(uint64_t p) {
    long i = floor_index(p);
    return i >= 0 && p - allocs[i].dptr < allocs[i].size ? &allocs[i] : NULL;
}

static int table_insert(const struct alloc *a) {
    if (n_allocs == cap_allocs) {
        size_t cap = cap_allocs ? cap_allocs * 2 : 256;
        struct alloc *n = realloc(allocs, cap * sizeof *n);
        if (!n) return -1;
        allocs = n;
        cap_allocs = cap;
    }
    long i = floor_index(a->dptr) + 1;
    memmove(&allocs[i + 1], &allocs[i], (n_allocs - (size_t)i) * sizeof *allocs);
    allocs[i] = *a;
    n_allocs++;
    return 0;
}

static void table_remove(struct alloc *a) {
    size_t i = (size_t)(a - allocs);
    memmove(&allocs[i], &allocs[i + 1], (n_allocs - i - 1) * sizeof *allocs);
    n_allocs--;
}

static char *map_backing(uint64_t len, int extra_flags) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra_flags, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Small allocations live on the heap (cheap, like a real driver's sub-allocator), aligned
 * as cuMemAlloc's are; large ones get their own lazily populated mapping. */
#define HEAP_BACKING_MAX (256u << 10)
#define ALLOC_ALIGN 512u

static char *backing(enum akind kind, uint64_t size, uint64_t *map_len) {
    if (kind != A_LEGACY && size <= HEAP_BACKING_MAX) {
        *map_len = 0;
        return aligned_alloc(ALLOC_ALIGN, ROUND_UP(size, ALLOC_ALIGN));
    }
    *map_len = ROUND_UP(size, (uint64_t)sysconf(_SC_PAGESIZE));
    return map_backing(*map_len, kind == A_LEGACY ? MAP_32BIT : 0);
}

static void release_backing(char *host, uint64_t map_len) {
    if (map_len) munmap(host, map_len);
    else free(host);
}

/* Creates an allocation of `size` bytes charged as `charge` (0: none) to the device. */
static CUresult new_alloc(enum akind kind, int dev, uint64_t size, uint64_t charge,
                          enum fg_kind fkind, struct fg_pool *pool, struct alloc **out) {
    uint64_t map_len;
    uint32_t range = FG_NO_RANGE;
    if (charge) {
        range = fg_range_new(cu_phys(dev), fkind, charge);
        if (range == FG_NO_RANGE) {
            fg_count_oom();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    char *host = backing(kind, size, &map_len);
    if (!host) {
        if (range != FG_NO_RANGE) fg_range_free(range);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    int host_visible = kind == A_MANAGED || kind == A_LEGACY || kind == A_HOST;
    struct alloc a = {.dptr = (uint64_t)(uintptr_t)host + (host_visible ? 0 : DEV_OFFSET),
                      .size = size, .host = host, .map_len = map_len, .kind = kind, .dev = dev,
                      .range = range, .pool = pool, .ctx = cu_current_ctx(), .ipc_fd = -1};
    if (table_insert(&a) != 0) {
        release_backing(host, map_len);
        if (range != FG_NO_RANGE) fg_range_free(range);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = find_base(a.dptr);
    return CUDA_SUCCESS;
}

static void pool_release_bytes(struct fg_pool *pool, uint64_t size);

static void drop_alloc(struct alloc *a) {
    if (a->range != FG_NO_RANGE) fg_range_free(a->range);
    if (a->kind == A_POOL) pool_release_bytes(a->pool, a->size);
    release_backing(a->host, a->map_len);
    if (a->ipc_fd >= 0) close(a->ipc_fd); /* importers' mappings keep the memory */
    free(a->reserve);
    table_remove(a);
}

/* A context is reset or destroyed: every allocation made in it goes, as the driver
 * documents ("destroy all allocations"), but for reserved address ranges, which belong to
 * the process. */
void cu_memory_context_gone(CUcontext ctx) {
    fg_lock();
    for (size_t i = n_allocs; i-- > 0;)
        if (allocs[i].ctx == ctx && allocs[i].kind != A_VA) drop_alloc(&allocs[i]);
    fg_unlock();
    cu_pools_sync();
}

/* ---- plain, pitched, legacy and managed allocations ----------------------------------- */

static CUresult alloc_device(CUdeviceptr *dptr, uint64_t size, enum akind kind) {
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!dptr || size == 0) return CUDA_ERROR_INVALID_VALUE;
    struct alloc *a;
    fg_lock();
    rc = new_alloc(kind, dev, size, size, FG_FIXED, NULL, &a);
    if (!rc) *dptr = a->dptr;
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    COUNT(cuMemAlloc_v2);
    return alloc_device(dptr, size, A_DEVICE);
}

/* The 32-bit ABI: the address and size must fit in 32 bits. */
EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int size) {
    COUNT(cuMemAlloc);
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr p;
    CUresult rc = alloc_device(&p, size, A_LEGACY);
    if (!rc) *dptr = (CUdeviceptr_v1)p;
    return rc;
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                   unsigned int elem) {
    COUNT(cuMemAllocPitch_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!dptr || !pitch || width == 0 || height == 0 || (elem != 4 && elem != 8 && elem != 16))
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t p = ROUND_UP((uint64_t)width, PITCH_ALIGN);
    if (p < width || height > UINT64_MAX / p) return CUDA_ERROR_INVALID_VALUE;
    rc = alloc_device(dptr, p * height, A_PITCH);
    if (!rc) *pitch = p;
    return rc;
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags) {
    COUNT(cuMemAllocManaged);
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!dptr || size == 0 || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    struct alloc *a;
    fg_lock();
    rc = new_alloc(A_MANAGED, dev, size, size, FG_MANAGED, NULL, &a);
    if (!rc) *dptr = a->dptr;
    fg_unlock();
    return rc;
}

static CUresult host_alloc(void **pp, size_t size) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!pp || size == 0) return CUDA_ERROR_INVALID_VALUE;
    struct alloc *a;
    fg_lock();
    rc = new_alloc(A_HOST, 0, size, 0, FG_FIXED, NULL, &a);
    if (!rc) *pp = a->host;
    fg_unlock();
    return rc;
}
EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t size) { COUNT(cuMemAllocHost_v2); return host_alloc(pp, size); }
EXPORT CUresult cuMemHostAlloc(void **pp, size_t size, unsigned int flags) {
    COUNT(cuMemHostAlloc);
    if (flags > 0xf) return CUDA_ERROR_INVALID_VALUE;
    return host_alloc(pp, size);
}

/* Pinned host memory is mapped into the device's (unified) address space at the same
 * address. */
EXPORT CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *dptr, void *host, unsigned flags) {
    COUNT(cuMemHostGetDevicePointer_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!dptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct alloc *a = find_containing((uintptr_t)host);
    int ok = a && a->kind == A_HOST;
    fg_unlock();
    if (!ok) return CUDA_ERROR_INVALID_VALUE;
    *dptr = (uintptr_t)host;
    return CUDA_SUCCESS;
}

/* Frees a device, managed or stream-ordered allocation by its base address. */
static CUresult free_device(CUdeviceptr p, int host_kind) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    struct alloc *a = find_base(p);
    int ok = a && (host_kind ? a->kind == A_HOST
                             : a->kind != A_HOST && a->kind != A_VA && a->kind != A_IPC);
    if (ok) drop_alloc(a);
    fg_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* A NULL pointer is freed with success, as NVIDIA's driver does: the runtime forwards
 * `cudaFree(0)` (the classic "initialize the context" call, which cuBLAS's runtime makes
 * in cublasCreate) to cuMemFree_v2, and cuBLAS fails if it is refused. */
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { COUNT(cuMemFree_v2); return p ? free_device(p, 0) : cu_ready(NULL); }
EXPORT CUresult cuMemFree(CUdeviceptr_v1 p) { COUNT(cuMemFree); return p ? free_device(p, 0) : cu_ready(NULL); }
EXPORT CUresult cuMemFreeHost(void *p) { COUNT(cuMemFreeHost); return free_device((uintptr_t)p, 1); }

EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr p) {
    COUNT(cuMemGetAddressRange_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    struct alloc *a = find_containing(p);
    if (a && a->kind != A_HOST && a->kind != A_VA) {
        if (base) *base = a->dptr;
        if (size) *size = a->size;
    } else {
        rc = CUDA_ERROR_NOT_FOUND;
    }
    fg_unlock();
    return rc;
}

/* ---- memory information ---------------------------------------------------------------- */

EXPORT CUresult cuMemGetInfo_v2(size_t *free_out, size_t *total_out) {
    COUNT(cuMemGetInfo_v2);
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!free_out || !total_out) return CUDA_ERROR_INVALID_VALUE;
    uint64_t total = fg_config()->device_mem[cu_phys(dev)];
    fg_lock();
    uint64_t used = fg_device_used(cu_phys(dev));
    fg_unlock();
    *total_out = total;
    *free_out = used >= total ? 0 : total - used;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetInfo(unsigned int *free_out, unsigned int *total_out) {
    COUNT(cuMemGetInfo);
    size_t f, t;
    if (!free_out || !total_out) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = cuMemGetInfo_v2(&f, &t);
    if (rc) return rc;
    *free_out = f > UINT32_MAX ? UINT32_MAX : (unsigned int)f;
    *total_out = t > UINT32_MAX ? UINT32_MAX : (unsigned int)t;
    return CUDA_SUCCESS;
}

/* ---- virtual memory management --------------------------------------------------------- */

#define VMM_MAGIC 0x564d4d48u
struct vmm_handle {
    uint32_t magic;
    int fd;               /* memfd: the physical memory, mappable at any reserved address */
    uint64_t size;
    int dev;
    uint32_t range;
    int refs;             /* cuMemCreate and each cuMemRetainAllocationHandle; cuMemRelease drops one */
    CUmemAllocationProp prop;
    int maps;
    struct vmm_handle *next;
};
static struct vmm_handle *handles;

struct mapping { uint64_t va, size; struct vmm_handle *h; int prot; };
static struct mapping *mappings;
static size_t n_mappings, cap_mappings;

static struct vmm_handle *handle_of(CUmemGenericAllocationHandle h) {
    for (struct vmm_handle *v = handles; v; v = v->next)
        if ((uintptr_t)v == h && v->magic == VMM_MAGIC && v->refs > 0) return v;
    return NULL;
}

static void handle_destroy_if_unused(struct vmm_handle *v) {
    if (v->refs > 0 || v->maps) return;
    if (v->range != FG_NO_RANGE) fg_range_free(v->range);
    close(v->fd);
    v->magic = 0;
    for (struct vmm_handle **pp = &handles; *pp; pp = &(*pp)->next)
        if (*pp == v) { *pp = v->next; break; }
    free(v);
}

static int prop_valid(const CUmemAllocationProp *p) {
    if (!p || p->type != CU_MEM_ALLOCATION_TYPE_PINNED) return 0;
    if (p->location.type == CU_MEM_LOCATION_TYPE_DEVICE) return cu_valid_device(p->location.id);
    return p->location.type == CU_MEM_LOCATION_TYPE_HOST;
}

EXPORT CUresult cuMemGetAllocationGranularity(size_t *gran, const CUmemAllocationProp *prop, int option) {
    COUNT(cuMemGetAllocationGranularity);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!gran || !prop_valid(prop) ||
        (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    *gran = GRANULARITY;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                            const CUmemAllocationProp *prop, unsigned long long flags) {
    COUNT(cuMemCreate);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!handle || !prop_valid(prop) || flags != 0 || size == 0 || size % GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    int on_device = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
    int fd = memfd_create("fake-cuda-vmm", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0) close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    struct vmm_handle *v = calloc(1, sizeof *v);
    if (!v) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *v = (struct vmm_handle){.magic = VMM_MAGIC, .fd = fd, .size = size,
                             .dev = on_device ? prop->location.id : -1, .range = FG_NO_RANGE,
                             .refs = 1, .prop = *prop};
    fg_lock();
    if (on_device) {
        v->range = fg_range_new(cu_phys(v->dev), FG_FIXED, size);
        if (v->range == FG_NO_RANGE) {
            fg_count_oom();
            fg_unlock();
            close(fd);
            free(v);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    v->next = handles;
    handles = v;
    *handle = (uintptr_t)v;
    fg_unlock();
    return CUDA_SUCCESS;
}

/* Physical memory stays until its last mapping goes, as the driver documents. */
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    COUNT(cuMemRelease);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    struct vmm_handle *v = handle_of(handle);
    if (v) {
        v->refs--;
        handle_destroy_if_unused(v);
    }
    fg_unlock();
    return v ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* The handle mapped at `addr`, with one more reference that cuMemRelease must drop. */
EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
    COUNT(cuMemRetainAllocationHandle);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!handle) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a = (uintptr_t)addr;
    rc = CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    for (size_t i = 0; i < n_mappings; i++)
        if (a >= mappings[i].va && a < mappings[i].va + mappings[i].size) {
            mappings[i].h->refs++;
            *handle = (uintptr_t)mappings[i].h;
            rc = CUDA_SUCCESS;
            break;
        }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                       CUmemGenericAllocationHandle handle) {
    COUNT(cuMemGetAllocationPropertiesFromHandle);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!prop) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct vmm_handle *v = handle_of(handle);
    if (v) *prop = v->prop;
    fg_unlock();
    return v ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* A POSIX file descriptor of the handle's memory (a new descriptor the caller closes),
 * for a handle created with that type among its requestedHandleTypes, as the driver
 * requires. Other types are not supported by the fake. */
EXPORT CUresult cuMemExportToShareableHandle(void *shareable, CUmemGenericAllocationHandle handle, int type,
                                             unsigned long long flags) {
    COUNT(cuMemExportToShareableHandle);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!shareable || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
    fg_lock();
    struct vmm_handle *v = handle_of(handle);
    int fd = -1;
    if (v && (v->prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        fd = fcntl(v->fd, F_DUPFD_CLOEXEC, 0);
    fg_unlock();
    if (!v || !(v->prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        return CUDA_ERROR_INVALID_VALUE;
    if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
    *(int *)shareable = fd;
    return CUDA_SUCCESS;
}

/* Importing would make another process's memory this one's: the fake does not model it. */
EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *os_handle, int type) {
    COUNT(cuMemImportFromShareableHandle);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!handle || (type == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR && (intptr_t)os_handle < 0))
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_ERROR_NOT_SUPPORTED;
}

EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                    unsigned long long flags) {
    COUNT(cuMemAddressReserve);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    (void)addr; /* only a hint */
    if (!ptr || size == 0 || size % GRANULARITY || flags != 0 || (align & (align - 1)))
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t a = align > GRANULARITY ? align : GRANULARITY;
    void *raw = mmap(NULL, size + a, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char *base = (char *)ROUND_UP((uintptr_t)raw, a);
    if (base > (char *)raw) munmap(raw, (size_t)(base - (char *)raw));
    char *end = base + size, *raw_end = (char *)raw + size + a;
    if (raw_end > end) munmap(end, (size_t)(raw_end - end));
    struct alloc r = {.dptr = (uintptr_t)base + DEV_OFFSET, .size = size, .host = base,
                      .map_len = size, .kind = A_VA, .range = FG_NO_RANGE, .ctx = cu_current_ctx(),
                      .ipc_fd = -1};
    fg_lock();
    if (table_insert(&r) != 0) {
        munmap(base, size);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        *ptr = r.dptr;
    }
    fg_unlock();
    return rc;
}

static int mapped_in(uint64_t va, uint64_t size) {
    for (size_t i = 0; i < n_mappings; i++)
        if (mappings[i].va < va + size && va < mappings[i].va + mappings[i].size) return 1;
    return 0;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    COUNT(cuMemAddressFree);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    struct alloc *r = find_base(ptr);
    if (!r || r->kind != A_VA || r->size != size || mapped_in(ptr, size)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        munmap(r->host, r->map_len);
        table_remove(r);
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                         CUmemGenericAllocationHandle handle, unsigned long long flags) {
    COUNT(cuMemMap);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (flags != 0 || size == 0 || size % GRANULARITY || offset % GRANULARITY || ptr % GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct vmm_handle *v = handle_of(handle);
    struct alloc *r = find_containing(ptr);
    if (!v || !r || r->kind != A_VA || ptr + size > r->dptr + r->size || offset + size > v->size ||
        mapped_in(ptr, size)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (n_mappings == cap_mappings &&
               !(mappings = realloc(mappings, (cap_mappings = cap_mappings * 2 + 16) * sizeof *mappings))) {
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else if (mmap((void *)(uintptr_t)(ptr - DEV_OFFSET), size, PROT_NONE, MAP_SHARED | MAP_FIXED,
                    v->fd, (off_t)offset) == MAP_FAILED) {
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        mappings[n_mappings++] = (struct mapping){ptr, size, v, 0};
        v->maps++;
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
    COUNT(cuMemUnmap);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    /* The range must consist of whole mappings. */
    uint64_t covered = 0;
    for (size_t i = 0; i < n_mappings; i++)
        if (mappings[i].va >= ptr && mappings[i].va + mappings[i].size <= ptr + size)
            covered += mappings[i].size;
        else if (mappings[i].va < ptr + size && ptr < mappings[i].va + mappings[i].size)
            covered = UINT64_MAX; /* partially overlapped: not allowed */
    if (size == 0 || covered != size) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        mmap((void *)(uintptr_t)(ptr - DEV_OFFSET), size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        for (size_t i = 0; i < n_mappings;) {
            if (mappings[i].va >= ptr && mappings[i].va + mappings[i].size <= ptr + size) {
                struct vmm_handle *v = mappings[i].h;
                mappings[i] = mappings[--n_mappings];
                v->maps--;
                handle_destroy_if_unused(v);
            } else {
                i++;
            }
        }
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
    COUNT(cuMemSetAccess);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!desc || count == 0 || size == 0) return CUDA_ERROR_INVALID_VALUE;
    int prot = PROT_NONE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || !cu_valid_device(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) prot = PROT_READ | PROT_WRITE;
        else if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ && prot == PROT_NONE) prot = PROT_READ;
        else if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE && desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ)
            return CUDA_ERROR_INVALID_VALUE;
    }
    fg_lock();
    uint64_t covered = 0;
    for (size_t i = 0; i < n_mappings; i++)
        if (mappings[i].va >= ptr && mappings[i].va + mappings[i].size <= ptr + size)
            covered += mappings[i].size;
    if (covered != size) {
        rc = CUDA_ERROR_INVALID_VALUE; /* every byte must be mapped */
    } else {
        mprotect((void *)(uintptr_t)(ptr - DEV_OFFSET), size, prot);
        for (size_t i = 0; i < n_mappings; i++)
            if (mappings[i].va >= ptr && mappings[i].va + mappings[i].size <= ptr + size)
                mappings[i].prot = prot;
    }
    fg_unlock();
    return rc;
}

/* ---- stream-ordered allocator ------------------------------------------------------------ */

#define POOL_MAGIC 0x504f4f4cu
struct fg_pool {
    uint32_t magic;
    int dev;
    int is_default;
    int destroyed;
    uint64_t reserved, used, reserved_high, used_high, threshold, max_size;
    int reuse[3];
    uint32_t range;       /* the reservation, charged to the device */
    struct fg_pool *next;
};
static struct fg_pool *pools;
static struct fg_pool *default_pool[FG_MAX_DEVICES], *current_pool[FG_MAX_DEVICES];

static struct fg_pool *pool_new(int dev, int is_default, uint64_t max_size) {
    struct fg_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    *p = (struct fg_pool){.magic = POOL_MAGIC, .dev = dev, .is_default = is_default,
                          .max_size = max_size, .reuse = {1, 1, 1}, .range = FG_NO_RANGE, .next = pools};
    pools = p;
    return p;
}

static struct fg_pool *pool_valid(CUmemoryPool p) {
    for (struct fg_pool *q = pools; q; q = q->next)
        if (q == p && q->magic == POOL_MAGIC && !q->destroyed) return q;
    return NULL;
}

/* Sets the reservation to `target` bytes (a multiple of the unit); -1 if it cannot grow. */
static int pool_reserve(struct fg_pool *p, uint64_t target) {
    if (target == p->reserved) return 0;
    if (target == 0) {
        fg_range_free(p->range);
        p->range = FG_NO_RANGE;
    } else if (p->range == FG_NO_RANGE) {
        p->range = fg_range_new(cu_phys(p->dev), FG_FIXED, target);
        if (p->range == FG_NO_RANGE) return -1;
    } else if (fg_range_resize(p->range, target) != 0) {
        return -1;
    }
    p->reserved = target;
    if (p->reserved > p->reserved_high) p->reserved_high = p->reserved;
    return 0;
}

/* Gives back reserved-but-unused memory down to `keep` bytes. */
static void pool_trim(struct fg_pool *p, uint64_t keep) {
    uint64_t target = ROUND_UP(p->used, GRANULARITY);
    uint64_t k = ROUND_UP(keep, GRANULARITY);
    if (k > target) target = k;
    if (target < p->reserved) pool_reserve(p, target);
}

static void pool_release_bytes(struct fg_pool *p, uint64_t size) {
    p->used -= size;
    if (p->destroyed && p->used == 0) pool_trim(p, 0);
}

void cu_pools_sync(void) {
    fg_lock();
    for (struct fg_pool *p = pools; p; p = p->next)
        if (p->magic == POOL_MAGIC && p->reserved > p->threshold) pool_trim(p, p->threshold);
    fg_unlock();
}

static struct fg_pool *device_pool(int dev, struct fg_pool **slot) {
    if (!default_pool[dev]) default_pool[dev] = pool_new(dev, 1, 0);
    if (!current_pool[dev]) current_pool[dev] = default_pool[dev];
    return *slot;
}

static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s, int use_current) {
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!fg_config()->pools) return CUDA_ERROR_NOT_SUPPORTED;
    if (!dptr || size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    fg_lock();
    /* cuMemAllocAsync: the current pool of the stream's device, as the driver does. */
    if (use_current) dev = cu_stream_device(s, dev);
    struct fg_pool *p = use_current ? device_pool(dev, &current_pool[dev]) : pool_valid(pool);
    if (!p) {
        fg_unlock();
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint64_t need = ROUND_UP(p->used + size, GRANULARITY);
    if (need > p->reserved && ((p->max_size && need > p->max_size) || pool_reserve(p, need) != 0)) {
        fg_count_oom();
        fg_unlock();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    struct alloc *a;
    rc = new_alloc(A_POOL, p->dev, size, 0, FG_FIXED, p, &a);
    if (!rc) {
        p->used += size;
        if (p->used > p->used_high) p->used_high = p->used;
        *dptr = a->dptr;
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *d, size_t n, CUstream s) { COUNT(cuMemAllocAsync); return alloc_from_pool(d, n, NULL, s, 1); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *d, size_t n, CUstream s) { COUNT(cuMemAllocAsync_ptsz); return alloc_from_pool(d, n, NULL, s, 1); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *d, size_t n, CUmemoryPool p, CUstream s) { COUNT(cuMemAllocFromPoolAsync); return alloc_from_pool(d, n, p, s, 0); }
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *d, size_t n, CUmemoryPool p, CUstream s) { COUNT(cuMemAllocFromPoolAsync_ptsz); return alloc_from_pool(d, n, p, s, 0); }

/* Memory goes back to its pool, which keeps it reserved until a synchronization. */
static CUresult free_async(CUdeviceptr p, CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return free_device(p, 0);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { COUNT(cuMemFreeAsync); return free_async(p, s); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { COUNT(cuMemFreeAsync_ptsz); return free_async(p, s); }

static CUresult pools_ready(void) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    return fg_config()->pools ? CUDA_SUCCESS : CUDA_ERROR_NOT_SUPPORTED;
}

EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    COUNT(cuMemPoolCreate);
    CUresult rc = pools_ready();
    if (rc) return rc;
    if (!pool || !props || props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        props->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_device(props->location.id)) return CUDA_ERROR_INVALID_DEVICE;
    fg_lock();
    struct fg_pool *p = pool_new(props->location.id, 0, props->maxSize);
    fg_unlock();
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    *pool = p;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    COUNT(cuMemPoolDestroy);
    CUresult rc = pools_ready();
    if (rc) return rc;
    fg_lock();
    struct fg_pool *p = pool_valid(pool);
    if (!p || p->is_default) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        p->destroyed = 1; /* outstanding allocations keep their memory until freed */
        pool_trim(p, 0);
        for (int d = 0; d < FG_MAX_DEVICES; d++)
            if (current_pool[d] == p) current_pool[d] = default_pool[d];
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
    COUNT(cuMemPoolTrimTo);
    CUresult rc = pools_ready();
    if (rc) return rc;
    fg_lock();
    struct fg_pool *p = pool_valid(pool);
    if (p) pool_trim(p, keep);
    fg_unlock();
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attr, void *value) {
    COUNT(cuMemPoolGetAttribute);
    CUresult rc = pools_ready();
    if (rc) return rc;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct fg_pool *p = pool_valid(pool);
    if (!p) rc = CUDA_ERROR_INVALID_VALUE;
    else switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *(int *)value = p->reuse[attr - 1]; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(cuuint64_t *)value = p->threshold; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *(cuuint64_t *)value = p->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *(cuuint64_t *)value = p->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *(cuuint64_t *)value = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *(cuuint64_t *)value = p->used_high; break;
    default: rc = CUDA_ERROR_INVALID_VALUE;
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value) {
    COUNT(cuMemPoolSetAttribute);
    CUresult rc = pools_ready();
    if (rc) return rc;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct fg_pool *p = pool_valid(pool);
    if (!p) rc = CUDA_ERROR_INVALID_VALUE;
    else switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: p->reuse[attr - 1] = *(int *)value; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: p->threshold = *(cuuint64_t *)value; break;
    /* the high watermarks can only be reset, to the current value, by writing 0 */
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
        if (*(cuuint64_t *)value) rc = CUDA_ERROR_INVALID_VALUE; else p->reserved_high = p->reserved;
        break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        if (*(cuuint64_t *)value) rc = CUDA_ERROR_INVALID_VALUE; else p->used_high = p->used;
        break;
    default: rc = CUDA_ERROR_INVALID_VALUE;
    }
    fg_unlock();
    return rc;
}

static CUresult pool_of_device(CUmemoryPool *pool, CUdevice dev, int current) {
    CUresult rc = pools_ready();
    if (rc) return rc;
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    fg_lock();
    *pool = device_pool(dev, current ? &current_pool[dev] : &default_pool[dev]);
    fg_unlock();
    return *pool ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) { COUNT(cuDeviceGetDefaultMemPool); return pool_of_device(pool, dev, 0); }
EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) { COUNT(cuDeviceGetMemPool); return pool_of_device(pool, dev, 1); }

EXPORT CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
    COUNT(cuDeviceSetMemPool);
    CUresult rc = pools_ready();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    fg_lock();
    struct fg_pool *p = pool_valid(pool);
    if (p && p->dev == dev) current_pool[dev] = p; else rc = CUDA_ERROR_INVALID_VALUE;
    fg_unlock();
    return rc;
}

/* ---- arrays: opaque, charged by their footprint ------------------------------------------- */

#define ARRAY_MAGIC 0x41525259u
struct fg_array { uint32_t magic; int mipmapped; uint32_t range; uint64_t bytes; struct fg_array *next; };
static struct fg_array *arrays;

static uint64_t format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32: case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

/* Bytes of one level, 0 if the descriptor is invalid. Height/depth 0 mean 1D/2D. */
static uint64_t level_bytes(uint64_t w, uint64_t h, uint64_t d, CUarray_format f, unsigned ch) {
    uint64_t e = format_bytes(f);
    if (!e || w == 0 || (ch != 1 && ch != 2 && ch != 4)) return 0;
    if (d && !h) return 0;
    uint64_t b = w * e * ch;
    if (h) b *= h;
    if (d) b *= d;
    return b;
}

static CUresult array_create(struct fg_array **out, uint64_t bytes, int mip) {
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!out || !bytes) return CUDA_ERROR_INVALID_VALUE;
    struct fg_array *a = calloc(1, sizeof *a);
    if (!a) return CUDA_ERROR_OUT_OF_MEMORY;
    bytes = ROUND_UP(bytes, ARRAY_ALIGN);
    fg_lock();
    a->range = fg_range_new(cu_phys(dev), FG_FIXED, bytes);
    if (a->range == FG_NO_RANGE) {
        fg_count_oom();
        fg_unlock();
        free(a);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *a = (struct fg_array){ARRAY_MAGIC, mip, a->range, bytes, arrays};
    arrays = a;
    fg_unlock();
    *out = a;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *d) {
    COUNT(cuArrayCreate_v2);
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    return array_create(arr, level_bytes(d->Width, d->Height, 0, d->Format, d->NumChannels), 0);
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    COUNT(cuArray3DCreate_v2);
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    return array_create(arr, level_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels), 0);
}

EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *arr, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels) {
    COUNT(cuMipmappedArrayCreate);
    if (!d || levels == 0) return CUDA_ERROR_INVALID_VALUE;
    uint64_t total = 0, w = d->Width, h = d->Height, z = d->Depth;
    for (unsigned l = 0; l < levels; l++) {
        uint64_t b = level_bytes(w, h, z, d->Format, d->NumChannels);
        if (!b) return CUDA_ERROR_INVALID_VALUE;
        total += b;
        w = w > 1 ? w / 2 : 1;
        if (h) h = h > 1 ? h / 2 : 1;
        if (z) z = z > 1 ? z / 2 : 1;
    }
    return array_create(arr, total, 1);
}

static CUresult array_destroy(struct fg_array *a, int mip) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    rc = CUDA_ERROR_INVALID_HANDLE;
    for (struct fg_array **pp = &arrays; *pp; pp = &(*pp)->next)
        if (*pp == a && a->magic == ARRAY_MAGIC && a->mipmapped == mip) {
            *pp = a->next;
            fg_range_free(a->range);
            free(a);
            rc = CUDA_SUCCESS;
            break;
        }
    fg_unlock();
    return rc;
}
EXPORT CUresult cuArrayDestroy(CUarray a) { COUNT(cuArrayDestroy); return array_destroy(a, 0); }
EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray a) { COUNT(cuMipmappedArrayDestroy); return array_destroy(a, 1); }

/* ---- copies and memsets ----------------------------------------------------------------- */

/* Host address of `n` device bytes at `p` (lock held). A managed range the device touches
 * becomes resident. `must_be_device`: p must be device memory (not host memory). */
static CUresult span(uint64_t p, uint64_t n, int must_be_device, char **host) {
    struct alloc *a = find_containing(p);
    if (!a) {
        if (must_be_device) return CUDA_ERROR_INVALID_VALUE;
        *host = (char *)(uintptr_t)p; /* unified addressing: plain host memory */
        return CUDA_SUCCESS;
    }
    if (n > a->dptr + a->size - p) return CUDA_ERROR_INVALID_VALUE;
    if (a->kind == A_HOST && must_be_device) return CUDA_ERROR_INVALID_VALUE;
    if (a->kind == A_VA) { /* every byte must be mapped with access */
        for (uint64_t cur = p; cur < p + n;) {
            size_t i = 0;
            while (i < n_mappings && !(mappings[i].va <= cur && cur < mappings[i].va + mappings[i].size)) i++;
            if (i == n_mappings || mappings[i].prot == PROT_NONE) return CUDA_ERROR_INVALID_VALUE;
            cur = mappings[i].va + mappings[i].size;
        }
    }
    if (a->kind == A_MANAGED) fg_range_touch(a->range, 0);
    *host = a->host + (p - a->dptr);
    return CUDA_SUCCESS;
}

static CUresult copy(uint64_t dst, int dst_dev, uint64_t src, int src_dev, size_t n, CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (n == 0) return CUDA_SUCCESS;
    char *d, *sp;
    fg_lock();
    rc = span(dst, n, dst_dev, &d);
    if (!rc) rc = span(src, n, src_dev, &sp);
    if (!rc) memmove(d, sp, n);
    /* Host to device or back: over the device's link (FAKE_CUDA_LINK_GBPS). */
    if (!rc && dst_dev != src_dev) {
        const struct alloc *a = find_containing(dst_dev ? dst : src);
        int dev = !a ? 0 : a->range != FG_NO_RANGE ? fg_range_dev(a->range) : cu_phys(a->dev);
        fg_link_moved(dev, dst_dev, n);
    }
    fg_unlock();
    return rc;
}

#define H(p) ((uint64_t)(uintptr_t)(p))
EXPORT CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { COUNT(cuMemcpy); return copy(d, 0, s, 0, n, NULL); }
EXPORT CUresult cuMemcpy_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { COUNT(cuMemcpy_ptds); return copy(d, 0, s, 0, n, NULL); }
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { COUNT(cuMemcpyHtoD_v2); return copy(d, 1, H(s), 0, n, NULL); }
EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void *s, size_t n) { COUNT(cuMemcpyHtoD_v2_ptds); return copy(d, 1, H(s), 0, n, NULL); }
EXPORT CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { COUNT(cuMemcpyDtoH_v2); return copy(H(d), 0, s, 1, n, NULL); }
EXPORT CUresult cuMemcpyDtoH_v2_ptds(void *d, CUdeviceptr s, size_t n) { COUNT(cuMemcpyDtoH_v2_ptds); return copy(H(d), 0, s, 1, n, NULL); }
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { COUNT(cuMemcpyDtoD_v2); return copy(d, 1, s, 1, n, NULL); }
EXPORT CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { COUNT(cuMemcpyDtoD_v2_ptds); return copy(d, 1, s, 1, n, NULL); }
EXPORT CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyAsync); return copy(d, 0, s, 0, n, st); }
EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyAsync_ptsz); return copy(d, 0, s, 0, n, st); }
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, CUstream st) { COUNT(cuMemcpyHtoDAsync_v2); return copy(d, 1, H(s), 0, n, st); }
EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void *s, size_t n, CUstream st) { COUNT(cuMemcpyHtoDAsync_v2_ptsz); return copy(d, 1, H(s), 0, n, st); }
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyDtoHAsync_v2); return copy(H(d), 0, s, 1, n, st); }
EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyDtoHAsync_v2_ptsz); return copy(H(d), 0, s, 1, n, st); }
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyDtoDAsync_v2); return copy(d, 1, s, 1, n, st); }
EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { COUNT(cuMemcpyDtoDAsync_v2_ptsz); return copy(d, 1, s, 1, n, st); }

static CUresult memset_n(CUdeviceptr d, uint32_t value, size_t count, unsigned width, CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (count == 0) return CUDA_SUCCESS;
    if (width == 4 && d % 4) return CUDA_ERROR_INVALID_VALUE;
    if (count > UINT64_MAX / width) return CUDA_ERROR_INVALID_VALUE;
    char *h;
    fg_lock();
    rc = span(d, (uint64_t)count * width, 1, &h);
    if (!rc) {
        if (width == 1) memset(h, (int)(value & 0xff), count);
        else for (size_t i = 0; i < count; i++) memcpy(h + i * 4, &value, 4);
    }
    fg_unlock();
    return rc;
}
/* Stream memory operations: the write happens at once (the fake's streams are synchronous). */
static CUresult write_value32(CUdeviceptr d, uint32_t value, unsigned flags, CUstream s) {
    return flags > 1 /* CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER */ ? CUDA_ERROR_INVALID_VALUE
                                                                     : memset_n(d, value, 1, 4, s);
}
EXPORT CUresult cuStreamWriteValue32(CUstream s, CUdeviceptr d, cuuint32_t v, unsigned f) { COUNT(cuStreamWriteValue32); return write_value32(d, v, f, s); }
EXPORT CUresult cuStreamWriteValue32_ptsz(CUstream s, CUdeviceptr d, cuuint32_t v, unsigned f) { COUNT(cuStreamWriteValue32_ptsz); return write_value32(d, v, f, s); }
EXPORT CUresult cuStreamWriteValue32_v2(CUstream s, CUdeviceptr d, cuuint32_t v, unsigned f) { COUNT(cuStreamWriteValue32_v2); return write_value32(d, v, f, s); }
EXPORT CUresult cuStreamWriteValue32_v2_ptsz(CUstream s, CUdeviceptr d, cuuint32_t v, unsigned f) { COUNT(cuStreamWriteValue32_v2_ptsz); return write_value32(d, v, f, s); }

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { COUNT(cuMemsetD8_v2); return memset_n(d, v, n, 1, NULL); }
EXPORT CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { COUNT(cuMemsetD8_v2_ptds); return memset_n(d, v, n, 1, NULL); }
EXPORT CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { COUNT(cuMemsetD32_v2); return memset_n(d, v, n, 4, NULL); }
EXPORT CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { COUNT(cuMemsetD32_v2_ptds); return memset_n(d, v, n, 4, NULL); }
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { COUNT(cuMemsetD8Async); return memset_n(d, v, n, 1, s); }
EXPORT CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { COUNT(cuMemsetD8Async_ptsz); return memset_n(d, v, n, 1, s); }
EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { COUNT(cuMemsetD32Async); return memset_n(d, v, n, 4, s); }
EXPORT CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { COUNT(cuMemsetD32Async_ptsz); return memset_n(d, v, n, 4, s); }

/* ---- managed memory hints -------------------------------------------------------------- */

/* The managed allocation holding [p, p+n), lock held. */
static struct alloc *managed_span(uint64_t p, uint64_t n) {
    struct alloc *a = find_containing(p);
    if (!a || a->kind != A_MANAGED || n == 0 || n > a->dptr + a->size - p) return NULL;
    return a;
}

static CUresult advise(CUdeviceptr p, size_t n, int advice, int loc_type, int loc_id) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (advice < CU_MEM_ADVISE_SET_READ_MOSTLY || advice > CU_MEM_ADVISE_UNSET_ACCESSED_BY)
        return CUDA_ERROR_INVALID_VALUE;
    int on_host = loc_type == CU_MEM_LOCATION_TYPE_HOST || loc_type == CU_MEM_LOCATION_TYPE_HOST_NUMA ||
                  loc_type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT;
    int needs_loc = advice != CU_MEM_ADVISE_SET_READ_MOSTLY && advice != CU_MEM_ADVISE_UNSET_READ_MOSTLY &&
                    advice != CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION;
    if (needs_loc && !on_host && !(loc_type == CU_MEM_LOCATION_TYPE_DEVICE && cu_valid_device(loc_id)))
        return CUDA_ERROR_INVALID_DEVICE;
    fg_lock();
    struct alloc *a = managed_span(p, n);
    if (!a) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        fg_count_advise();
        if (advice == CU_MEM_ADVISE_SET_PREFERRED_LOCATION) fg_range_prefer_host(a->range, on_host);
        if (advice == CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION) fg_range_prefer_host(a->range, 0);
    }
    fg_unlock();
    return rc;
}

EXPORT CUresult cuMemAdvise(CUdeviceptr p, size_t n, int advice, CUdevice dev) {
    COUNT(cuMemAdvise);
    return advise(p, n, advice, dev == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE, dev);
}

EXPORT CUresult cuMemAdvise_v2(CUdeviceptr p, size_t n, int advice, CUmemLocation loc) {
    COUNT(cuMemAdvise_v2);
    return advise(p, n, advice, loc.type, loc.id);
}

/* Prefetch moves the whole managed allocation: to the device (evicting others if it
 * must) or to the host. */
static CUresult prefetch(CUdeviceptr p, size_t n, int loc_type, int loc_id, unsigned flags, CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    int to_device = loc_type == CU_MEM_LOCATION_TYPE_DEVICE;
    if (to_device && (!cu_valid_device(loc_id) || !fg_config()->managed)) return CUDA_ERROR_INVALID_DEVICE;
    if (!to_device && loc_type != CU_MEM_LOCATION_TYPE_HOST && loc_type != CU_MEM_LOCATION_TYPE_HOST_NUMA &&
        loc_type != CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT)
        return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct alloc *a = managed_span(p, n);
    if (!a) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        fg_count_prefetch();
        if (to_device) fg_range_touch(a->range, 1); else fg_range_evict(a->range);
    }
    fg_unlock();
    return rc;
}

static int dev_loc_type(CUdevice d) { return d == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE; }
EXPORT CUresult cuMemPrefetchAsync(CUdeviceptr p, size_t n, CUdevice d, CUstream s) { COUNT(cuMemPrefetchAsync); return prefetch(p, n, dev_loc_type(d), d, 0, s); }
EXPORT CUresult cuMemPrefetchAsync_ptsz(CUdeviceptr p, size_t n, CUdevice d, CUstream s) { COUNT(cuMemPrefetchAsync_ptsz); return prefetch(p, n, dev_loc_type(d), d, 0, s); }
EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr p, size_t n, CUmemLocation l, unsigned f, CUstream s) { COUNT(cuMemPrefetchAsync_v2); return prefetch(p, n, l.type, l.id, f, s); }
EXPORT CUresult cuMemPrefetchAsync_v2_ptsz(CUdeviceptr p, size_t n, CUmemLocation l, unsigned f, CUstream s) { COUNT(cuMemPrefetchAsync_v2_ptsz); return prefetch(p, n, l.type, l.id, f, s); }

/* ---- pointer attributes and IPC --------------------------------------------------------- */

/* Writes one attribute of allocation `a` (NULL: not a CUDA pointer, answered with the
 * documented defaults by cuPointerGetAttributes). */
static CUresult pointer_attribute(void *data, int attr, const struct alloc *a, uint64_t p) {
    int on_device = a && a->kind != A_HOST;
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data = a ? a->ctx : NULL; break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned *)data = !a ? 0 : on_device ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = a ? p : 0; break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (a && a->kind != A_MANAGED && a->kind != A_HOST) return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = a ? (void *)(uintptr_t)p : NULL;
        break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: *(unsigned *)data = a && a->kind == A_MANAGED; break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = a ? a->dev : -2; break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(int *)data = a && (a->kind == A_DEVICE || a->kind == A_PITCH);
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *(CUdeviceptr *)data = a ? a->dptr : 0; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *(size_t *)data = a ? a->size : 0; break;
    case CU_POINTER_ATTRIBUTE_MAPPED: *(int *)data = a != NULL; break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: *(CUmemoryPool *)data = a ? a->pool : NULL; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuPointerGetAttribute(void *data, int attr, CUdeviceptr p) {
    COUNT(cuPointerGetAttribute);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct alloc *a = find_containing(p);
    rc = a && a->kind != A_VA ? pointer_attribute(data, attr, a, p) : CUDA_ERROR_INVALID_VALUE;
    fg_unlock();
    return rc;
}

EXPORT CUresult cuPointerGetAttributes(unsigned n, int *attrs, void **data, CUdeviceptr p) {
    COUNT(cuPointerGetAttributes);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!attrs || !data) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct alloc *a = find_containing(p);
    if (a && a->kind == A_VA) a = NULL;
    for (unsigned i = 0; i < n && !rc; i++) {
        rc = pointer_attribute(data[i], attrs[i], a, p);
        if (rc == CUDA_ERROR_INVALID_VALUE && attrs[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER) {
            *(void **)data[i] = NULL; /* device-only memory has no host pointer */
            rc = CUDA_SUCCESS;
        }
    }
    fg_unlock();
    return rc;
}

/* Legacy IPC. A handle names the exporter (pid and start time), its allocation and
 * device-state range, and the memfd that backs the allocation once it is exported; another
 * process on the same fake GPU maps that memfd through /proc/PID/fd, so both see one copy
 * of the data, as two processes do on a real GPU. */
#define IPC_MAGIC "fakeipc\0"
struct ipc_handle {
    char magic[8];
    int32_t pid;          /* the exporter */
    int32_t fd;           /* its memfd */
    uint64_t start_time;  /* tells a reused pid apart */
    uint64_t dptr, size;  /* the allocation, in the exporter */
    uint32_t range;       /* its device-state range: alive while the allocation is */
    uint32_t phys;        /* the physical device */
    uint64_t serial;      /* the exporter's export number: a later allocation at the same
                             address, with the same fd number, is not the one named here */
    char unused[8];
};
_Static_assert(sizeof(struct ipc_handle) == sizeof(CUipcMemHandle), "an IPC handle is 64 bytes");

static uint64_t page_size(void) { return (uint64_t)sysconf(_SC_PAGESIZE); }

static void ipc_name(char *buf, size_t len, uint64_t dptr, uint64_t serial) {
    snprintf(buf, len, "fake-cuda-ipc-%llx-%llu", (unsigned long long)dptr, (unsigned long long)serial);
}

/* Copies into `fd` the pages of [host, host+len) that were ever written (present or swapped
 * according to /proc/self/pagemap): the others read as zeros, and copying them would
 * populate gigabytes of an allocation nobody touched. */
static int copy_used_pages(int fd, const char *host, uint64_t len) {
    uint64_t page = page_size(), entries[512];
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    int rc = 0;
    for (uint64_t off = 0; off < len && !rc; off += 512 * page) {
        uint64_t n = (len - off) / page < 512 ? (len - off) / page : 512;
        off_t at = (off_t)((uintptr_t)(host + off) / page * sizeof entries[0]);
        if (pm < 0 || pread(pm, entries, n * sizeof entries[0], at) != (ssize_t)(n * sizeof entries[0]))
            memset(entries, 0xff, sizeof entries); /* unknown: copy everything */
        for (uint64_t k = 0; k < n && !rc; k++)
            if ((entries[k] >> 62) && /* bit 63: present, bit 62: swapped */
                pwrite(fd, host + off + k * page, page, (off_t)(off + k * page)) != (ssize_t)page)
                rc = -1;
    }
    if (pm >= 0) close(pm);
    return rc;
}

/* Puts an allocation's data in a memfd that other processes can map (lock held). Its own
 * mapping is replaced in place; a heap block moves to a mapping of its own (the device
 * address does not change: it is not the host address) and stays allocated as a reserve. */
static int make_shareable(struct alloc *a) {
    static uint64_t exports;
    if (a->ipc_fd >= 0) return 0;
    char name[64];
    ipc_name(name, sizeof name, a->dptr, ++exports);
    uint64_t len = ROUND_UP(a->size, page_size());
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)len) != 0) goto fail;
    if (a->map_len) {
        if (copy_used_pages(fd, a->host, a->map_len) != 0 ||
            mmap(a->host, a->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
            goto fail;
    } else {
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) goto fail;
        memcpy(m, a->host, a->size);
        a->reserve = a->host;
        a->host = m;
        a->map_len = len;
    }
    a->ipc_fd = fd;
    a->ipc_serial = exports;
    return 0;
fail:
    close(fd);
    return -1;
}

/* Legacy IPC works only on memory from cuMemAlloc: not managed, pool or VMM memory. */
EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr p) {
    COUNT(cuIpcGetMemHandle);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!handle) return CUDA_ERROR_INVALID_VALUE;
    fg_lock();
    struct alloc *a = find_containing(p);
    if (!a || (a->kind != A_DEVICE && a->kind != A_PITCH)) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (make_shareable(a) != 0) {
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        struct ipc_handle h = {.magic = IPC_MAGIC, .fd = a->ipc_fd, .dptr = a->dptr,
                               .size = a->size, .range = a->range, .phys = (uint32_t)cu_phys(a->dev),
                               .serial = a->ipc_serial};
        fg_range_owner(a->range, &h.pid, &h.start_time);
        memcpy(handle, &h, sizeof h);
    }
    fg_unlock();
    return rc;
}

/* Maps the exporter's memfd (lock held). CUDA_ERROR_MAP_FAILED when it cannot. */
static CUresult ipc_map(const struct ipc_handle *h, char **host, uint64_t *len) {
    char path[64], link[128], want[80], name[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h->pid, (int)h->fd);
    ipc_name(name, sizeof name, h->dptr, h->serial);
    snprintf(want, sizeof want, "/memfd:%s ", name); /* then "(deleted)" */
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) return CUDA_ERROR_MAP_FAILED;
    link[n] = 0;
    if (strncmp(link, want, strlen(want)) != 0) return CUDA_ERROR_INVALID_HANDLE; /* not that memory */
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return CUDA_ERROR_MAP_FAILED;
    struct stat st;
    *len = ROUND_UP(h->size, page_size());
    void *m = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size == *len)
        m = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return CUDA_ERROR_MAP_FAILED;
    *host = m;
    return CUDA_SUCCESS;
}

/* Opening a handle again returns the same address and counts a reference, as documented;
 * opening it in the process that exported it answers CUDA_ERROR_INVALID_CONTEXT, and a
 * handle whose allocation or exporter is gone (or on another fake GPU) is unknown:
 * CUDA_ERROR_INVALID_HANDLE. The mapping charges nothing: the exporter's allocation is the
 * device memory. */
static CUresult ipc_open(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned flags) {
    int dev;
    CUresult rc = cu_ready(&dev);
    if (rc) return rc;
    if (!pdptr || (flags & ~(unsigned)CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)) return CUDA_ERROR_INVALID_VALUE;
    struct ipc_handle h;
    memcpy(&h, &handle, sizeof h);
    if (memcmp(h.magic, IPC_MAGIC, sizeof h.magic) != 0 || h.size == 0 ||
        h.phys >= (uint32_t)fg_config()->device_count)
        return CUDA_ERROR_INVALID_HANDLE;
    if (h.pid == getpid()) return CUDA_ERROR_INVALID_CONTEXT;
    fg_lock();
    for (size_t i = 0; i < n_allocs; i++)
        if (allocs[i].kind == A_IPC && allocs[i].src_pid == h.pid && allocs[i].src_dptr == h.dptr &&
            allocs[i].ipc_serial == h.serial) {
            allocs[i].refs++;
            *pdptr = allocs[i].dptr;
            fg_unlock();
            return CUDA_SUCCESS;
        }
    char *host = NULL;
    uint64_t len = 0;
    rc = fg_range_is(h.range, h.pid, h.start_time, h.size) ? ipc_map(&h, &host, &len)
                                                          : CUDA_ERROR_INVALID_HANDLE;
    if (!rc) {
        int ordinal = cu_ordinal((int)h.phys);
        struct alloc a = {.dptr = (uintptr_t)host + DEV_OFFSET, .size = h.size, .host = host,
                          .map_len = len, .kind = A_IPC, .dev = ordinal >= 0 ? ordinal : dev,
                          .range = FG_NO_RANGE, .ctx = cu_current_ctx(), .ipc_fd = -1,
                          .ipc_serial = h.serial, .src_pid = h.pid, .src_dptr = h.dptr, .refs = 1};
        if (table_insert(&a) != 0) {
            munmap(host, len);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            *pdptr = a.dptr;
        }
    }
    fg_unlock();
    return rc;
}
EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned f) { COUNT(cuIpcOpenMemHandle); return ipc_open(p, h, f); }
EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned f) { COUNT(cuIpcOpenMemHandle_v2); return ipc_open(p, h, f); }

/* Drops one reference; the mapping goes with the last. */
EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
    COUNT(cuIpcCloseMemHandle);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    fg_lock();
    struct alloc *a = find_base(p);
    if (!a || a->kind != A_IPC) rc = CUDA_ERROR_INVALID_VALUE;
    else if (--a->refs == 0) drop_alloc(a);
    fg_unlock();
    return rc;
}

/* ---- exit --------------------------------------------------------------------------------- */

void cu_report_leaks(void) {
    fg_lock();
    for (size_t i = 0; i < n_allocs; i++)
        if (allocs[i].kind != A_VA) fg_report_leak(kind_names[allocs[i].kind], allocs[i].dptr, allocs[i].size);
    for (struct vmm_handle *v = handles; v; v = v->next)
        if (v->refs > 0) fg_report_leak("vmm", (uintptr_t)v, v->size);
    for (struct fg_array *a = arrays; a; a = a->next) fg_report_leak("array", (uintptr_t)a, a->bytes);
    fg_unlock();
}
