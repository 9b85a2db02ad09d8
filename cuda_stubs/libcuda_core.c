/* Fake libcuda.so.1: initialization, devices, contexts, streams, events, error strings
 * and driver entry point access. Memory lives in libcuda_memory.c. */
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libcuda_internal.h"

uint64_t cu_calls[N_CU_ENTRIES];
static const char *const cu_names[N_CU_ENTRIES] = {
#define ENTRY(sym, base, ver, pt) #sym,
#include "libcuda_entries.h"
#undef ENTRY
};

static int initialized;          /* cuInit succeeded in this process */
static int forked_after_init;    /* this process is a child forked after cuInit */

static void at_fork_child(void) {
    if (initialized) forked_after_init = 1;
}

__attribute__((constructor)) static void cu_load(void) {
    fg_register_calls(cu_names, cu_calls, N_CU_ENTRIES);
    pthread_atfork(NULL, NULL, at_fork_child);
}

/* Runs before libfakegpu_core's destructor (we depend on it), which writes the report. */
__attribute__((destructor)) static void cu_unload(void) {
    if (initialized && !forked_after_init) cu_report_leaks();
}

CUresult cu_initialized(void) {
    if (!initialized || forked_after_init) return CUDA_ERROR_NOT_INITIALIZED;
    return CUDA_SUCCESS;
}

/* ---- CUDA_VISIBLE_DEVICES ------------------------------------------------------------ */

static int visible[FG_MAX_DEVICES]; /* ordinal -> physical device */
static int n_visible;
static pthread_once_t visible_once = PTHREAD_ONCE_INIT;

/* One entry: a physical index in decimal, or a UUID or a unique prefix of one, with or
 * without "GPU-". -1 if it names no device (or several). */
static int visible_entry(const char *s, size_t len) {
    size_t digits = 0;
    while (digits < len && s[digits] >= '0' && s[digits] <= '9') digits++;
    if (len > 0 && digits == len) {
        if (len > 2) return -1; /* at most 16 devices */
        int i = s[0] - '0';
        if (len == 2) i = i * 10 + (s[1] - '0');
        return i < fg_config()->device_count ? i : -1;
    }
    int d = fg_device_by_uuid_prefix(s, len);
    return d >= 0 ? d : -1;
}

/* As NVIDIA's driver reads it at cuInit: unset, every device in physical order; otherwise
 * the listed devices in the listed order, up to the first entry that names no device or one
 * already listed. Set but empty: no device. */
static void parse_visible(void) {
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    if (!v) {
        for (n_visible = 0; n_visible < fg_config()->device_count; n_visible++)
            visible[n_visible] = n_visible;
        return;
    }
    for (const char *p = v; *v && n_visible < FG_MAX_DEVICES;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int d = visible_entry(p, len);
        for (int k = 0; k < n_visible && d >= 0; k++)
            if (visible[k] == d) d = -1;
        if (d < 0) break;
        visible[n_visible++] = d;
        if (!comma) break;
        p = comma + 1;
    }
}

int cu_valid_device(CUdevice dev) { return dev >= 0 && dev < n_visible; }
int cu_visible_count(void) { return n_visible; }
int cu_phys(CUdevice dev) { return visible[dev]; }

int cu_ordinal(int phys) {
    for (int k = 0; k < n_visible; k++)
        if (visible[k] == phys) return k;
    return -1;
}

EXPORT CUresult cuInit(unsigned int flags) {
    COUNT(cuInit);
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (forked_after_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (fg_init() != 0) return CUDA_ERROR_NOT_INITIALIZED;
    pthread_once(&visible_once, parse_visible);
    if (n_visible == 0) return CUDA_ERROR_NO_DEVICE;
    initialized = 1;
    return CUDA_SUCCESS;
}

int cu_driver_version(void) {
    int v = fg_driver_version();
    return v > 0 ? v : FG_DRIVER_VERSION_DEFAULT; /* invalid: said once, and cuInit fails */
}

EXPORT CUresult cuDriverGetVersion(int *version) {
    COUNT(cuDriverGetVersion);
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = cu_driver_version();
    return CUDA_SUCCESS;
}

/* ---- errors -------------------------------------------------------------------------- */

static const struct { CUresult code; const char *name, *text; } errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEINITIALIZED, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_lookup(CUresult e, const char **out, int want_name) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == e) {
            *out = want_name ? errors[i].name : errors[i].text;
            return CUDA_SUCCESS;
        }
    *out = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult e, const char **s) {
    COUNT(cuGetErrorString);
    return error_lookup(e, s, 0);
}

EXPORT CUresult cuGetErrorName(CUresult e, const char **s) {
    COUNT(cuGetErrorName);
    return error_lookup(e, s, 1);
}

/* ---- devices ------------------------------------------------------------------------- */

EXPORT CUresult cuDeviceGetCount(int *count) {
    COUNT(cuDeviceGetCount);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = n_visible;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    COUNT(cuDeviceGet);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

static CUresult device_query(CUdevice dev, const void *out) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    return cu_valid_device(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    COUNT(cuDeviceGetName);
    CUresult rc = device_query(dev, name);
    if (rc) return rc;
    if (len <= 0) return CUDA_ERROR_INVALID_VALUE;
    /* Named by the physical device, as NVML names it: the same GPU has one name. */
    int phys = cu_phys(dev);
    snprintf(name, (size_t)len, "cuvisor fake GPU %d (%llu MiB)", phys,
             (unsigned long long)(fg_config()->device_mem[phys] >> 20));
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev) {
    CUresult rc = device_query(dev, uuid);
    if (rc) return rc;
    fg_device_uuid(cu_phys(dev), (unsigned char *)uuid->bytes);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { COUNT(cuDeviceGetUuid); return device_uuid(uuid, dev); }
EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { COUNT(cuDeviceGetUuid_v2); return device_uuid(uuid, dev); }

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    COUNT(cuDeviceTotalMem_v2);
    CUresult rc = device_query(dev, bytes);
    if (rc) return rc;
    *bytes = fg_config()->device_mem[cu_phys(dev)];
    return CUDA_SUCCESS;
}

/* The 32-bit ABI cannot express more than 4 GiB - 1: the value saturates. */
EXPORT CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev) {
    COUNT(cuDeviceTotalMem);
    CUresult rc = device_query(dev, bytes);
    if (rc) return rc;
    uint64_t m = fg_config()->device_mem[cu_phys(dev)];
    *bytes = m > UINT32_MAX ? UINT32_MAX : (unsigned int)m;
    return CUDA_SUCCESS;
}

/* An H100 SXM5's answers (h100_attributes.h), but for what the fake models per device and
 * per configuration. */
int cu_attribute(int attrib, CUdevice dev) {
    const fg_config_t *c = fg_config();
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return FG_PCI_BUS(cu_phys(dev));
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: return 0; /* the slot on the bus */
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: return c->managed;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return c->pools;
    default: break;
    }
    switch (attrib) { /* the table's "modelled" lines were answered above */
#define ATTR(name, number, h100) case number: return h100;
#include "h100_attributes.h"
#undef ATTR
    default: return 0;
    }
}

EXPORT CUresult cuDeviceGetAttribute(int *value, int attrib, CUdevice dev) {
    COUNT(cuDeviceGetAttribute);
    CUresult rc = device_query(dev, value);
    if (rc) return rc;
    if (attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
    *value = cu_attribute(attrib, dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceComputeCapability(int *major, int *minor, CUdevice dev) {
    COUNT(cuDeviceComputeCapability);
    CUresult rc = device_query(dev, major);
    if (rc) return rc;
    if (!minor) return CUDA_ERROR_INVALID_VALUE;
    *major = 9;
    *minor = 0;
    return CUDA_SUCCESS;
}

/* "domain:bus:device.function" with a 4-digit domain, in the 13 characters the driver
 * documents ("0000:10:00.0"); NVML prints the 8-digit form. Upper case, as the driver's. */
EXPORT CUresult cuDeviceGetPCIBusId(char *bus_id, int len, CUdevice dev) {
    COUNT(cuDeviceGetPCIBusId);
    CUresult rc = device_query(dev, bus_id);
    if (rc) return rc;
    if (len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(bus_id, (size_t)len, "%04X:%02X:%02X.0", 0u, (unsigned)FG_PCI_BUS(cu_phys(dev)), 0u);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetByPCIBusId(CUdevice *dev, const char *bus_id) {
    COUNT(cuDeviceGetByPCIBusId);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!dev || !bus_id) return CUDA_ERROR_INVALID_VALUE;
    int phys = fg_device_by_pci_bus_id(bus_id);
    if (phys == -2) return CUDA_ERROR_INVALID_VALUE;
    int ordinal = phys >= 0 ? cu_ordinal(phys) : -1; /* a hidden device is no device here */
    if (ordinal < 0) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

/* ---- contexts ------------------------------------------------------------------------- */

#define CTX_MAGIC 0x43545843u
struct fg_context {
    uint32_t magic;   /* CTX_MAGIC while alive; contexts are never freed, so stale handles are detectable */
    int dev;
    int primary;
    int refcount;     /* primary: retains; created: 1 until destroyed */
    unsigned flags;
    unsigned long long id; /* cuCtxGetId: unique in the process, new for a reset primary */
};
static unsigned long long next_ctx_id = 1;

static struct fg_context primary_ctx[FG_MAX_DEVICES];
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread CUcontext ctx_stack[32];
static __thread int ctx_depth;

static int ctx_alive(CUcontext c) { return c && c->magic == CTX_MAGIC && c->refcount > 0; }
/* A primary context's handle stays valid while inactive: it can be made current (work in it
 * fails until it is retained). The runtime does this with the handle from its private table. */
static int ctx_settable(CUcontext c) { return ctx_alive(c) || (c && c->magic == CTX_MAGIC && c->primary); }

CUcontext cu_current_ctx(void) { return ctx_depth ? ctx_stack[ctx_depth - 1] : NULL; }

CUresult cu_ready(int *dev) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    CUcontext c = cu_current_ctx();
    if (!ctx_alive(c)) return CUDA_ERROR_INVALID_CONTEXT;
    if (dev) *dev = c->dev;
    return CUDA_SUCCESS;
}

/* The primary context's handle, the same for the life of the process. A reset or last
 * release deactivates it; its next activation is a new context with a new id. */
static struct fg_context *primary_locked(CUdevice dev) {
    struct fg_context *c = &primary_ctx[dev];
    *c = (struct fg_context){.magic = CTX_MAGIC, .dev = dev, .primary = 1, .refcount = c->refcount,
                             .flags = c->flags, .id = c->id ? c->id : next_ctx_id++};
    return c;
}

CUcontext cu_primary_ctx(CUdevice dev) {
    pthread_mutex_lock(&ctx_lock);
    struct fg_context *c = primary_locked(dev);
    pthread_mutex_unlock(&ctx_lock);
    return c;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    COUNT(cuDevicePrimaryCtxRetain);
    CUresult rc = device_query(dev, ctx);
    if (rc) return rc;
    pthread_mutex_lock(&ctx_lock);
    struct fg_context *c = primary_locked(dev);
    c->refcount++;
    pthread_mutex_unlock(&ctx_lock);
    fg_note_context(cu_phys(dev));
    *ctx = c;
    return CUDA_SUCCESS;
}

static CUresult primary_release(CUdevice dev) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    rc = primary_ctx[dev].refcount > 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
    int last = !rc && --primary_ctx[dev].refcount == 0;
    if (last) primary_ctx[dev].id = 0; /* its next activation is a new context */
    pthread_mutex_unlock(&ctx_lock);
    if (last) {
        cu_cls_context_gone(&primary_ctx[dev]);
        cu_memory_context_gone(&primary_ctx[dev]);
    }
    return rc;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { COUNT(cuDevicePrimaryCtxRelease); return primary_release(dev); }
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) { COUNT(cuDevicePrimaryCtxRelease_v2); return primary_release(dev); }

static CUresult primary_set_flags(CUdevice dev, unsigned flags) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    primary_ctx[dev].flags = flags;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned flags) { COUNT(cuDevicePrimaryCtxSetFlags); return primary_set_flags(dev, flags); }
EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned flags) { COUNT(cuDevicePrimaryCtxSetFlags_v2); return primary_set_flags(dev, flags); }

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned *flags, int *active) {
    COUNT(cuDevicePrimaryCtxGetState);
    CUresult rc = device_query(dev, flags);
    if (rc) return rc;
    if (!active) return CUDA_ERROR_INVALID_VALUE;
    *flags = primary_ctx[dev].flags;
    *active = primary_ctx[dev].refcount > 0;
    return CUDA_SUCCESS;
}

static CUresult primary_reset(CUdevice dev) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    primary_ctx[dev].refcount = 0;
    primary_ctx[dev].flags = 0;
    primary_ctx[dev].id = 0;
    pthread_mutex_unlock(&ctx_lock);
    cu_cls_context_gone(&primary_ctx[dev]); /* the runtime's destructors run here */
    cu_memory_context_gone(&primary_ctx[dev]);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) { COUNT(cuDevicePrimaryCtxReset); return primary_reset(dev); }
EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) { COUNT(cuDevicePrimaryCtxReset_v2); return primary_reset(dev); }

EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned flags, CUdevice dev) {
    COUNT(cuCtxCreate_v2);
    CUresult rc = device_query(dev, ctx);
    if (rc) return rc;
    if (ctx_depth == (int)(sizeof ctx_stack / sizeof ctx_stack[0])) return CUDA_ERROR_UNKNOWN;
    struct fg_context *c = calloc(1, sizeof *c);
    if (!c) return CUDA_ERROR_OUT_OF_MEMORY;
    *c = (struct fg_context){.magic = CTX_MAGIC, .dev = dev, .refcount = 1, .flags = flags,
                             .id = 0};
    pthread_mutex_lock(&ctx_lock);
    c->id = next_ctx_id++;
    pthread_mutex_unlock(&ctx_lock);
    ctx_stack[ctx_depth++] = c;
    fg_note_context(cu_phys(dev));
    *ctx = c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    COUNT(cuCtxDestroy_v2);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!ctx_alive(ctx) || ctx->primary) return CUDA_ERROR_INVALID_VALUE;
    ctx->refcount = 0;
    ctx->magic = 0;
    if (cu_current_ctx() == ctx) ctx_depth--;
    cu_cls_context_gone(ctx);
    cu_memory_context_gone(ctx);
    return CUDA_SUCCESS;
}

static CUresult ctx_push(CUcontext ctx) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!ctx_settable(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == (int)(sizeof ctx_stack / sizeof ctx_stack[0])) return CUDA_ERROR_UNKNOWN;
    ctx_stack[ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}

static CUresult ctx_pop(CUcontext *ctx) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (ctx_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = ctx_stack[--ctx_depth];
    if (ctx) *ctx = c;
    return CUDA_SUCCESS;
}
/* The pre-3.2 names, which the driver still exports, behave as the _v2 ones. */
EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) { COUNT(cuCtxPushCurrent_v2); return ctx_push(ctx); }
EXPORT CUresult cuCtxPushCurrent(CUcontext ctx) { COUNT(cuCtxPushCurrent); return ctx_push(ctx); }
EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *ctx) { COUNT(cuCtxPopCurrent_v2); return ctx_pop(ctx); }
EXPORT CUresult cuCtxPopCurrent(CUcontext *ctx) { COUNT(cuCtxPopCurrent); return ctx_pop(ctx); }

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    COUNT(cuCtxSetCurrent);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!ctx) { /* unbinds the thread's current context */
        if (ctx_depth) ctx_depth--;
        return CUDA_SUCCESS;
    }
    if (!ctx_settable(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == 0) ctx_depth = 1;
    ctx_stack[ctx_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx) {
    COUNT(cuCtxGetCurrent);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = cu_current_ctx();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *dev) {
    COUNT(cuCtxGetDevice);
    int d;
    CUresult rc = cu_ready(&d);
    if (rc) return rc;
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    *dev = d;
    return CUDA_SUCCESS;
}

/* A context argument: NULL is the current one. */
static CUresult ctx_arg(CUcontext *ctx) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!*ctx) *ctx = cu_current_ctx();
    return ctx_settable(*ctx) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

EXPORT CUresult cuCtxGetId(CUcontext ctx, unsigned long long *id) {
    COUNT(cuCtxGetId);
    return cu_context_id(ctx, id);
}

CUresult cu_context_id(CUcontext ctx, unsigned long long *id) {
    CUresult rc = ctx_arg(&ctx);
    if (rc) return rc;
    if (!id) return CUDA_ERROR_INVALID_VALUE;
    *id = ctx->id;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned *version) {
    COUNT(cuCtxGetApiVersion);
    CUresult rc = ctx_arg(&ctx);
    if (rc) return rc;
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = 3020; /* contexts of the _v2 API */
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetFlags(unsigned *flags) {
    COUNT(cuCtxGetFlags);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!flags) return CUDA_ERROR_INVALID_VALUE;
    *flags = cu_current_ctx()->flags;
    return CUDA_SUCCESS;
}

/* Lower numbers are higher priorities: 0 (least) to -5 (greatest) on an H100. */
EXPORT CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest) {
    COUNT(cuCtxGetStreamPriorityRange);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

/* CUlimit values an H100 context starts with; settable, remembered per process. */
static size_t limits[7] = {1024, 1 << 20, 8 << 20, 2, 2048, 64, 0};

EXPORT CUresult cuCtxGetLimit(size_t *value, int limit) {
    COUNT(cuCtxGetLimit);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    if (limit < 0 || limit >= (int)(sizeof limits / sizeof limits[0])) return CUDA_ERROR_UNSUPPORTED_LIMIT;
    *value = __atomic_load_n(&limits[limit], __ATOMIC_RELAXED);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetLimit(int limit, size_t value) {
    COUNT(cuCtxSetLimit);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (limit < 0 || limit >= (int)(sizeof limits / sizeof limits[0])) return CUDA_ERROR_UNSUPPORTED_LIMIT;
    __atomic_store_n(&limits[limit], value, __ATOMIC_RELAXED);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) {
    COUNT(cuCtxSynchronize);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    cu_pools_sync();
    return CUDA_SUCCESS;
}

/* ---- streams and events: all work completes synchronously in the fake ------------------ */

#define STREAM_MAGIC 0x5354524du
struct fg_stream { uint32_t magic; CUcontext ctx; unsigned flags; };

int cu_valid_stream(CUstream s) {
    return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD || s->magic == STREAM_MAGIC;
}

static CUresult stream_create(CUstream *s, unsigned flags) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!s || flags > 1) return CUDA_ERROR_INVALID_VALUE;
    struct fg_stream *st = calloc(1, sizeof *st);
    if (!st) return CUDA_ERROR_OUT_OF_MEMORY;
    *st = (struct fg_stream){.magic = STREAM_MAGIC, .ctx = cu_current_ctx(), .flags = flags};
    *s = st;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreate(CUstream *s, unsigned flags) { COUNT(cuStreamCreate); return stream_create(s, flags); }
EXPORT CUresult cuStreamCreateWithPriority(CUstream *s, unsigned flags, int priority) {
    COUNT(cuStreamCreateWithPriority);
    (void)priority;
    return stream_create(s, flags);
}

int cu_stream_device(CUstream s, int current) {
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) return current;
    return ctx_alive(s->ctx) ? s->ctx->dev : current;
}

/* The stream's context; the special streams (NULL, legacy, per-thread) belong to the
 * current context. No green contexts in the fake: *green is NULL. */
static CUresult stream_ctx(CUstream s, CUcontext *ctx, CUgreenCtx *green, int v2) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!ctx || (v2 && !green)) return CUDA_ERROR_INVALID_VALUE;
    CUcontext c;
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
        c = cu_current_ctx();
        if (!ctx_alive(c)) return CUDA_ERROR_INVALID_CONTEXT;
    } else if (s->magic != STREAM_MAGIC) {
        return CUDA_ERROR_INVALID_HANDLE;
    } else {
        c = s->ctx;
    }
    *ctx = c;
    if (v2) *green = NULL;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamGetCtx(CUstream s, CUcontext *c) { COUNT(cuStreamGetCtx); return stream_ctx(s, c, NULL, 0); }
EXPORT CUresult cuStreamGetCtx_ptsz(CUstream s, CUcontext *c) { COUNT(cuStreamGetCtx_ptsz); return stream_ctx(s, c, NULL, 0); }
EXPORT CUresult cuStreamGetCtx_v2(CUstream s, CUcontext *c, CUgreenCtx *g) { COUNT(cuStreamGetCtx_v2); return stream_ctx(s, c, g, 1); }
EXPORT CUresult cuStreamGetCtx_v2_ptsz(CUstream s, CUcontext *c, CUgreenCtx *g) { COUNT(cuStreamGetCtx_v2_ptsz); return stream_ctx(s, c, g, 1); }

EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
    COUNT(cuStreamDestroy_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!s || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD || s->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    s->magic = 0; /* kept allocated so that a stale handle stays detectable */
    return CUDA_SUCCESS;
}

static CUresult stream_sync(CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    cu_pools_sync();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream s) { COUNT(cuStreamSynchronize); return stream_sync(s); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { COUNT(cuStreamSynchronize_ptsz); return stream_sync(s); }

static CUresult stream_query(CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    return cu_valid_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
EXPORT CUresult cuStreamQuery(CUstream s) { COUNT(cuStreamQuery); return stream_query(s); }
EXPORT CUresult cuStreamQuery_ptsz(CUstream s) { COUNT(cuStreamQuery_ptsz); return stream_query(s); }

#define EVENT_MAGIC 0x45564e54u
struct fg_event { uint32_t magic; unsigned flags; int recorded; struct timespec when; };

static int event_valid(CUevent e) { return e && e->magic == EVENT_MAGIC; }

static CUresult stream_wait(CUstream s, CUevent e, unsigned flags) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!cu_valid_stream(s) || !event_valid(e)) return CUDA_ERROR_INVALID_HANDLE;
    return flags > 1 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned f) { COUNT(cuStreamWaitEvent); return stream_wait(s, e, f); }
EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned f) { COUNT(cuStreamWaitEvent_ptsz); return stream_wait(s, e, f); }

/* Host functions run in stream order; the fake's streams have finished everything, so
 * the function runs now, on the calling thread. */
static CUresult launch_host_func(CUstream s, void (*fn)(void *), void *data) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    fn(data);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuLaunchHostFunc(CUstream s, void (*fn)(void *), void *data) { COUNT(cuLaunchHostFunc); return launch_host_func(s, fn, data); }
EXPORT CUresult cuLaunchHostFunc_ptsz(CUstream s, void (*fn)(void *), void *data) { COUNT(cuLaunchHostFunc_ptsz); return launch_host_func(s, fn, data); }

static CUresult stream_capturing(CUstream s, int *status) {
    CUresult rc = stream_query(s);
    if (rc) return rc;
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    *status = CU_STREAM_CAPTURE_STATUS_NONE; /* the fake has no graph capture */
    return CUDA_SUCCESS;
}
/* The fake never captures: the status is NONE, and the other outputs (id, graph,
 * dependencies, edges), which the driver fills only while capturing, are left alone. */
static CUresult capture_info(CUstream s, int *status, cuuint64_t *id) {
    (void)id;
    return stream_capturing(s, status);
}
EXPORT CUresult cuStreamGetCaptureInfo(CUstream s, int *st, cuuint64_t *id) { COUNT(cuStreamGetCaptureInfo); return capture_info(s, st, id); }
EXPORT CUresult cuStreamGetCaptureInfo_ptsz(CUstream s, int *st, cuuint64_t *id) { COUNT(cuStreamGetCaptureInfo_ptsz); return capture_info(s, st, id); }
EXPORT CUresult cuStreamGetCaptureInfo_v2(CUstream s, int *st, cuuint64_t *id, void **graph, const void **deps, size_t *n) {
    COUNT(cuStreamGetCaptureInfo_v2);
    (void)graph, (void)deps, (void)n;
    return capture_info(s, st, id);
}
EXPORT CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream s, int *st, cuuint64_t *id, void **graph, const void **deps, size_t *n) {
    COUNT(cuStreamGetCaptureInfo_v2_ptsz);
    (void)graph, (void)deps, (void)n;
    return capture_info(s, st, id);
}
EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream s, int *st, cuuint64_t *id, void **graph, const void **deps,
                                          const void **edges, size_t *n) {
    COUNT(cuStreamGetCaptureInfo_v3);
    (void)graph, (void)deps, (void)edges, (void)n;
    return capture_info(s, st, id);
}
EXPORT CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream s, int *st, cuuint64_t *id, void **graph, const void **deps,
                                               const void **edges, size_t *n) {
    COUNT(cuStreamGetCaptureInfo_v3_ptsz);
    (void)graph, (void)deps, (void)edges, (void)n;
    return capture_info(s, st, id);
}
EXPORT CUresult cuStreamIsCapturing(CUstream s, int *st) { COUNT(cuStreamIsCapturing); return stream_capturing(s, st); }
EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, int *st) { COUNT(cuStreamIsCapturing_ptsz); return stream_capturing(s, st); }

EXPORT CUresult cuEventCreate(CUevent *e, unsigned flags) {
    COUNT(cuEventCreate);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!e || flags > 0xf) return CUDA_ERROR_INVALID_VALUE;
    struct fg_event *ev = calloc(1, sizeof *ev);
    if (!ev) return CUDA_ERROR_OUT_OF_MEMORY;
    *ev = (struct fg_event){.magic = EVENT_MAGIC, .flags = flags};
    *e = ev;
    return CUDA_SUCCESS;
}

static CUresult event_record(CUevent e, CUstream s) {
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!event_valid(e) || !cu_valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    clock_gettime(CLOCK_MONOTONIC, &e->when);
    e->recorded = 1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { COUNT(cuEventRecord); return event_record(e, s); }
/* Flags: CU_EVENT_RECORD_DEFAULT (0) or CU_EVENT_RECORD_EXTERNAL (1, graphs only). */
EXPORT CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned f) {
    COUNT(cuEventRecordWithFlags);
    return f > 1 ? CUDA_ERROR_INVALID_VALUE : event_record(e, s);
}
EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned f) {
    COUNT(cuEventRecordWithFlags_ptsz);
    return f > 1 ? CUDA_ERROR_INVALID_VALUE : event_record(e, s);
}
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { COUNT(cuEventRecord_ptsz); return event_record(e, s); }

EXPORT CUresult cuEventSynchronize(CUevent e) {
    COUNT(cuEventSynchronize);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!event_valid(e)) return CUDA_ERROR_INVALID_HANDLE;
    cu_pools_sync();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventQuery(CUevent e) {
    COUNT(cuEventQuery);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    return event_valid(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end) {
    COUNT(cuEventElapsedTime);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    if (!event_valid(start) || !event_valid(end)) return CUDA_ERROR_INVALID_HANDLE;
    if (!start->recorded || !end->recorded) return CUDA_ERROR_INVALID_HANDLE;
    if ((start->flags | end->flags) & 0x2 /* CU_EVENT_DISABLE_TIMING */) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)((end->when.tv_sec - start->when.tv_sec) * 1e3 +
                  (end->when.tv_nsec - start->when.tv_nsec) / 1e6);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    COUNT(cuEventDestroy_v2);
    CUresult rc = cu_ready(NULL);
    if (rc) return rc;
    if (!event_valid(e)) return CUDA_ERROR_INVALID_HANDLE;
    e->magic = 0;
    return CUDA_SUCCESS;
}

/* ---- driver entry point access --------------------------------------------------------- */

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    COUNT(cuGetProcAddress);
    return cu_get_proc_address(symbol, pfn, version, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status) {
    COUNT(cuGetProcAddress_v2);
    return cu_get_proc_address(symbol, pfn, version, flags, status);
}

/* cuGetExportTable, the runtime's private tables, is in libcuda_darkapi.c. */

/* ---- error log callbacks (CUDA 12.9): the fake writes no log, so a registered callback
 * is kept and never called ------------------------------------------------------------- */

#define LOG_CALLBACK_MAGIC 0x4c4f4743u
struct fg_log_callback { uint32_t magic; void (*fn)(void *, int, char *, size_t); void *data; };

EXPORT CUresult cuLogsRegisterCallback(void (*fn)(void *, int, char *, size_t), void *data, void **handle) {
    COUNT(cuLogsRegisterCallback);
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    struct fg_log_callback *cb = calloc(1, sizeof *cb);
    if (!cb) return CUDA_ERROR_OUT_OF_MEMORY;
    *cb = (struct fg_log_callback){LOG_CALLBACK_MAGIC, fn, data};
    if (handle) *handle = cb;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLogsUnregisterCallback(void *handle) {
    COUNT(cuLogsUnregisterCallback);
    struct fg_log_callback *cb = handle;
    if (!cb || cb->magic != LOG_CALLBACK_MAGIC) return CUDA_ERROR_INVALID_VALUE;
    cb->magic = 0; /* kept allocated: a stale handle stays detectable */
    return CUDA_SUCCESS;
}

/* Graph memory: the fake has no graphs, so none is ever used or reserved (the four
 * CUgraphMem_attribute values are cuuint64_t counters). */
EXPORT CUresult cuDeviceGetGraphMemAttribute(CUdevice dev, int attr, void *value) {
    COUNT(cuDeviceGetGraphMemAttribute);
    CUresult rc = device_query(dev, value);
    if (rc) return rc;
    if (attr < 0 || attr > 3) return CUDA_ERROR_INVALID_VALUE;
    *(cuuint64_t *)value = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev) {
    COUNT(cuDeviceGraphMemTrim);
    CUresult rc = cu_initialized();
    if (rc) return rc;
    return cu_valid_device(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
