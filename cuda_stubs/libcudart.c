/* Fake libcudart.so.12. It reaches the driver exactly as NVIDIA's runtime does: it
 * dlopen()s libcuda.so.1, dlsym()s cuGetProcAddress_v2 and nothing else, asks that
 * resolver for itself ("cuGetProcAddress"), and then fetches every driver entry point by
 * base name and the runtime's CUDA version through the resolver it got back. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cuda_types.h"
#include "fakegpu.h"

#define CUDART_VERSION 12090
#define EXPORT __attribute__((visibility("default")))

typedef int cudaError_t;
typedef CUstream cudaStream_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorDeviceUninitialized = 201,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorSymbolNotFound = 500,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999,
};
enum { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };

/* The leading fields of cudaDeviceProp at their real offsets; the rest is not modelled. */
struct cudaDeviceProp {
    char name[256];
    CUuuid uuid;
    char luid[8];
    unsigned int luidDeviceNodeMask;
    size_t totalGlobalMem;
    char rest[1032 - 256 - 16 - 8 - 4 - 4 - 8];
};
typedef struct { char reserved[64]; } cudaIpcMemHandle_t;

#define RT_ENTRIES(X) X(cudaGetDeviceCount) X(cudaSetDevice) X(cudaGetDevice) X(cudaMalloc)      \
    X(cudaFree) X(cudaMallocManaged) X(cudaMallocPitch) X(cudaMallocAsync) X(cudaFreeAsync)      \
    X(cudaMemGetInfo) X(cudaGetDeviceProperties) X(cudaGetDeviceProperties_v2) X(cudaMemcpy)     \
    X(cudaGetDriverEntryPoint) X(cudaGetDriverEntryPointByVersion) X(cudaIpcGetMemHandle)        \
    X(cudaGetErrorString) X(cudaGetErrorName) X(cudaGetLastError) X(cudaPeekAtLastError)         \
    X(cudaDeviceSynchronize) X(cudaRuntimeGetVersion) X(cudaDriverGetVersion)
enum {
#define X(name) IDX_##name,
    RT_ENTRIES(X)
#undef X
    N_RT_ENTRIES
};
static uint64_t rt_calls[N_RT_ENTRIES];
static const char *const rt_names[] = {
#define X(name) #name,
    RT_ENTRIES(X)
#undef X
};
#define COUNT(name) FG_COUNT(rt_calls, IDX_##name)

__attribute__((constructor)) static void rt_load(void) {
    fg_register_calls(rt_names, rt_calls, N_RT_ENTRIES);
}

/* ---- the driver, as the runtime sees it ------------------------------------------------ */

typedef CUresult (*resolver_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static resolver_t resolve;
static struct {
    CUresult (*Init)(unsigned);
    CUresult (*DriverGetVersion)(int *);
    CUresult (*DeviceGetCount)(int *);
    CUresult (*DeviceGet)(CUdevice *, int);
    CUresult (*DeviceGetName)(char *, int, CUdevice);
    CUresult (*DeviceTotalMem)(size_t *, CUdevice);
    CUresult (*DeviceGetUuid)(CUuuid *, CUdevice);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*CtxSetCurrent)(CUcontext);
    CUresult (*CtxSynchronize)(void);
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);
    CUresult (*MemAllocPitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
    CUresult (*MemAllocManaged)(CUdeviceptr *, size_t, unsigned);
    CUresult (*MemAllocAsync)(CUdeviceptr *, size_t, CUstream);
    CUresult (*MemFreeAsync)(CUdeviceptr, CUstream);
    CUresult (*MemFree)(CUdeviceptr);
    CUresult (*MemGetInfo)(size_t *, size_t *);
    CUresult (*Memcpy)(CUdeviceptr, CUdeviceptr, size_t);
    CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*MemcpyDtoH)(void *, CUdeviceptr, size_t);
    CUresult (*MemcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t);
    CUresult (*IpcGetMemHandle)(CUipcMemHandle *, CUdeviceptr);
} drv;

static const struct { const char *name; int version; void **slot; } driver_table[] = {
    {"cuInit", 2000, (void **)&drv.Init},
    {"cuDriverGetVersion", 2020, (void **)&drv.DriverGetVersion},
    {"cuDeviceGetCount", 2000, (void **)&drv.DeviceGetCount},
    {"cuDeviceGet", 2000, (void **)&drv.DeviceGet},
    {"cuDeviceGetName", 2000, (void **)&drv.DeviceGetName},
    {"cuDeviceTotalMem", 3020, (void **)&drv.DeviceTotalMem},
    {"cuDeviceGetUuid", 11040, (void **)&drv.DeviceGetUuid},
    {"cuDevicePrimaryCtxRetain", 7000, (void **)&drv.DevicePrimaryCtxRetain},
    {"cuCtxSetCurrent", 4000, (void **)&drv.CtxSetCurrent},
    {"cuCtxSynchronize", 2000, (void **)&drv.CtxSynchronize},
    {"cuMemAlloc", 3020, (void **)&drv.MemAlloc},
    {"cuMemAllocPitch", 3020, (void **)&drv.MemAllocPitch},
    {"cuMemAllocManaged", 6000, (void **)&drv.MemAllocManaged},
    {"cuMemAllocAsync", 11020, (void **)&drv.MemAllocAsync},
    {"cuMemFreeAsync", 11020, (void **)&drv.MemFreeAsync},
    {"cuMemFree", 3020, (void **)&drv.MemFree},
    {"cuMemGetInfo", 3020, (void **)&drv.MemGetInfo},
    {"cuMemcpy", 4000, (void **)&drv.Memcpy},
    {"cuMemcpyHtoD", 3020, (void **)&drv.MemcpyHtoD},
    {"cuMemcpyDtoH", 3020, (void **)&drv.MemcpyDtoH},
    {"cuMemcpyDtoD", 3020, (void **)&drv.MemcpyDtoD},
    {"cuIpcGetMemHandle", 4010, (void **)&drv.IpcGetMemHandle},
};

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static cudaError_t load_error = cudaErrorUnknown;
static int device_count;
static CUcontext primary[FG_MAX_DEVICES];
static pthread_mutex_t primary_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int current_device;
static __thread int thread_bound = -1;   /* device whose primary context this thread has current */
static __thread cudaError_t last_error;

static cudaError_t from_driver(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return cudaSuccess;
    case CUDA_ERROR_INVALID_VALUE: return cudaErrorInvalidValue;
    case CUDA_ERROR_OUT_OF_MEMORY: return cudaErrorMemoryAllocation;
    case CUDA_ERROR_NOT_INITIALIZED: case CUDA_ERROR_DEINITIALIZED: return cudaErrorInitializationError;
    case CUDA_ERROR_NO_DEVICE: return cudaErrorNoDevice;
    case CUDA_ERROR_INVALID_DEVICE: return cudaErrorInvalidDevice;
    case CUDA_ERROR_INVALID_CONTEXT: return cudaErrorDeviceUninitialized;
    case CUDA_ERROR_INVALID_HANDLE: return cudaErrorInvalidResourceHandle;
    case CUDA_ERROR_NOT_FOUND: return cudaErrorSymbolNotFound;
    case CUDA_ERROR_NOT_SUPPORTED: return cudaErrorNotSupported;
    default: return cudaErrorUnknown;
    }
}

static void load_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        load_error = cudaErrorInsufficientDriver;
        return;
    }
    resolver_t first = (resolver_t)dlsym(h, "cuGetProcAddress_v2");
    void *self = NULL;
    if (!first || first("cuGetProcAddress", &self, CUDART_VERSION, 0, NULL) != CUDA_SUCCESS || !self) {
        load_error = cudaErrorInsufficientDriver;
        return;
    }
    resolve = (resolver_t)self;
    for (size_t i = 0; i < sizeof driver_table / sizeof driver_table[0]; i++) {
        CUdriverProcAddressQueryResult st;
        if (resolve(driver_table[i].name, driver_table[i].slot, driver_table[i].version, 0, &st) != CUDA_SUCCESS ||
            !*driver_table[i].slot) {
            load_error = cudaErrorInsufficientDriver;
            return;
        }
    }
    CUresult r = drv.Init(0);
    if (r == CUDA_SUCCESS) r = drv.DeviceGetCount(&device_count);
    load_error = from_driver(r);
}

static cudaError_t record(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

/* Loads the driver once; makes the current device's primary context current on this thread. */
static cudaError_t lazy_init(void) {
    pthread_once(&load_once, load_driver);
    if (load_error) return record(load_error);
    if (thread_bound == current_device) return cudaSuccess;
    pthread_mutex_lock(&primary_lock);
    CUresult r = CUDA_SUCCESS;
    if (!primary[current_device]) r = drv.DevicePrimaryCtxRetain(&primary[current_device], current_device);
    pthread_mutex_unlock(&primary_lock);
    if (r == CUDA_SUCCESS) r = drv.CtxSetCurrent(primary[current_device]);
    if (r == CUDA_SUCCESS) thread_bound = current_device;
    return record(from_driver(r));
}

#define INIT_OR_RETURN()                  \
    do {                                  \
        cudaError_t e_ = lazy_init();     \
        if (e_) return e_;                \
    } while (0)
#define CALL(expr) record(from_driver(expr))

/* ---- the runtime API --------------------------------------------------------------------- */

EXPORT cudaError_t cudaGetDeviceCount(int *n) {
    COUNT(cudaGetDeviceCount);
    if (!n) return record(cudaErrorInvalidValue);
    pthread_once(&load_once, load_driver);
    if (load_error) {
        *n = 0;
        return record(load_error);
    }
    *n = device_count;
    return cudaSuccess;
}

EXPORT cudaError_t cudaSetDevice(int d) {
    COUNT(cudaSetDevice);
    pthread_once(&load_once, load_driver);
    if (load_error) return record(load_error);
    if (d < 0 || d >= device_count) return record(cudaErrorInvalidDevice);
    current_device = d;
    return lazy_init();
}

EXPORT cudaError_t cudaGetDevice(int *d) {
    COUNT(cudaGetDevice);
    if (!d) return record(cudaErrorInvalidValue);
    *d = current_device;
    return cudaSuccess;
}

EXPORT cudaError_t cudaMalloc(void **p, size_t n) {
    COUNT(cudaMalloc);
    INIT_OR_RETURN();
    if (!p) return record(cudaErrorInvalidValue);
    if (n == 0) { /* the runtime answers a zero-byte request itself */
        *p = NULL;
        return cudaSuccess;
    }
    CUdeviceptr d = 0;
    cudaError_t e = CALL(drv.MemAlloc(&d, n));
    *p = e ? NULL : (void *)(uintptr_t)d;
    return e;
}

EXPORT cudaError_t cudaFree(void *p) {
    COUNT(cudaFree);
    INIT_OR_RETURN();
    if (!p) return cudaSuccess;
    return CALL(drv.MemFree((uintptr_t)p));
}

EXPORT cudaError_t cudaMallocManaged(void **p, size_t n, unsigned int flags) {
    COUNT(cudaMallocManaged);
    INIT_OR_RETURN();
    if (!p) return record(cudaErrorInvalidValue);
    CUdeviceptr d = 0;
    cudaError_t e = CALL(drv.MemAllocManaged(&d, n, flags));
    *p = e ? NULL : (void *)(uintptr_t)d;
    return e;
}

EXPORT cudaError_t cudaMallocPitch(void **p, size_t *pitch, size_t width, size_t height) {
    COUNT(cudaMallocPitch);
    INIT_OR_RETURN();
    if (!p || !pitch) return record(cudaErrorInvalidValue);
    CUdeviceptr d = 0;
    cudaError_t e = CALL(drv.MemAllocPitch(&d, pitch, width, height, 4));
    *p = e ? NULL : (void *)(uintptr_t)d;
    return e;
}

EXPORT cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t s) {
    COUNT(cudaMallocAsync);
    INIT_OR_RETURN();
    if (!p) return record(cudaErrorInvalidValue);
    CUdeviceptr d = 0;
    cudaError_t e = CALL(drv.MemAllocAsync(&d, n, s));
    *p = e ? NULL : (void *)(uintptr_t)d;
    return e;
}

EXPORT cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
    COUNT(cudaFreeAsync);
    INIT_OR_RETURN();
    return CALL(drv.MemFreeAsync((uintptr_t)p, s));
}

EXPORT cudaError_t cudaMemGetInfo(size_t *free_out, size_t *total_out) {
    COUNT(cudaMemGetInfo);
    INIT_OR_RETURN();
    return CALL(drv.MemGetInfo(free_out, total_out));
}

static cudaError_t device_properties(struct cudaDeviceProp *prop, int d) {
    pthread_once(&load_once, load_driver);
    if (load_error) return record(load_error);
    if (!prop) return record(cudaErrorInvalidValue);
    if (d < 0 || d >= device_count) return record(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    CUresult r = drv.DeviceGetName(prop->name, sizeof prop->name, d);
    if (r == CUDA_SUCCESS) r = drv.DeviceGetUuid(&prop->uuid, d);
    if (r == CUDA_SUCCESS) r = drv.DeviceTotalMem(&prop->totalGlobalMem, d);
    return CALL(r);
}
EXPORT cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) { COUNT(cudaGetDeviceProperties); return device_properties(p, d); }
EXPORT cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp *p, int d) { COUNT(cudaGetDeviceProperties_v2); return device_properties(p, d); }

EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, int kind) {
    COUNT(cudaMemcpy);
    INIT_OR_RETURN();
    uint64_t d = (uintptr_t)dst, s = (uintptr_t)src;
    switch (kind) {
    case cudaMemcpyHostToHost: memmove(dst, src, n); return cudaSuccess;
    case cudaMemcpyHostToDevice: return CALL(drv.MemcpyHtoD(d, src, n));
    case cudaMemcpyDeviceToHost: return CALL(drv.MemcpyDtoH(dst, s, n));
    case cudaMemcpyDeviceToDevice: return CALL(drv.MemcpyDtoD(d, s, n));
    case cudaMemcpyDefault: return CALL(drv.Memcpy(d, s, n));
    default: return record(cudaErrorInvalidMemcpyDirection);
    }
}

static cudaError_t entry_point(const char *symbol, void **fn, int version, unsigned long long flags, int *status) {
    pthread_once(&load_once, load_driver);
    if (load_error) return record(load_error);
    if (!symbol || !fn) return record(cudaErrorInvalidValue);
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult r = resolve(symbol, fn, version, flags, &st);
    if (r != CUDA_SUCCESS) return CALL(r);
    if (status) *status = (int)st; /* cudaDriverEntryPointQueryResult has the same values */
    return *fn ? cudaSuccess : record(cudaErrorSymbolNotFound);
}

EXPORT cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags, int *status) {
    COUNT(cudaGetDriverEntryPoint);
    return entry_point(symbol, fn, CUDART_VERSION, flags, status);
}

EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version,
                                                    unsigned long long flags, int *status) {
    COUNT(cudaGetDriverEntryPointByVersion);
    return entry_point(symbol, fn, (int)version, flags, status);
}

EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *h, void *p) {
    COUNT(cudaIpcGetMemHandle);
    INIT_OR_RETURN();
    if (!h) return record(cudaErrorInvalidValue);
    return CALL(drv.IpcGetMemHandle((CUipcMemHandle *)h, (uintptr_t)p));
}

EXPORT cudaError_t cudaDeviceSynchronize(void) {
    COUNT(cudaDeviceSynchronize);
    INIT_OR_RETURN();
    return CALL(drv.CtxSynchronize());
}

EXPORT cudaError_t cudaGetLastError(void) {
    COUNT(cudaGetLastError);
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

EXPORT cudaError_t cudaPeekAtLastError(void) { COUNT(cudaPeekAtLastError); return last_error; }

EXPORT cudaError_t cudaRuntimeGetVersion(int *v) {
    COUNT(cudaRuntimeGetVersion);
    if (!v) return record(cudaErrorInvalidValue);
    *v = CUDART_VERSION;
    return cudaSuccess;
}

EXPORT cudaError_t cudaDriverGetVersion(int *v) {
    COUNT(cudaDriverGetVersion);
    if (!v) return record(cudaErrorInvalidValue);
    pthread_once(&load_once, load_driver);
    if (!drv.DriverGetVersion) {
        *v = 0; /* documented: 0 when no driver is installed */
        return cudaSuccess;
    }
    return CALL(drv.DriverGetVersion(v));
}

static const struct { cudaError_t code; const char *name, *text; } rt_errors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorDeviceUninitialized, "cudaErrorDeviceUninitialized", "invalid device context"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorSymbolNotFound, "cudaErrorSymbolNotFound", "named symbol not found"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

static const char *rt_error(cudaError_t e, int name) {
    for (size_t i = 0; i < sizeof rt_errors / sizeof rt_errors[0]; i++)
        if (rt_errors[i].code == e) return name ? rt_errors[i].name : rt_errors[i].text;
    return name ? "cudaErrorUnknown" : "unrecognized error code";
}
EXPORT const char *cudaGetErrorString(cudaError_t e) { COUNT(cudaGetErrorString); return rt_error(e, 0); }
EXPORT const char *cudaGetErrorName(cudaError_t e) { COUNT(cudaGetErrorName); return rt_error(e, 1); }
