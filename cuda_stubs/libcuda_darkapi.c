/* Fake libcuda.so.1: the private tables that NVIDIA's CUDA runtime asks for with
 * cuGetExportTable, so that NVIDIA's own libcudart (shared, and the static copies inside
 * CuPy, cuBLAS, NCCL and nvcc-built programs) runs on the fake GPU.
 *
 * Provenance. This file holds interface facts only, and no code of any other project:
 *  - the table identifiers (UUIDs), slot positions and call signatures, as published by
 *    ZLUDA (vosen/ZLUDA, dark_api/src/lib.rs and zluda/src/impl/, MIT/Apache-2.0) and
 *    re-observed by watching the calls that cross the public cuGetExportTable ABI
 *    (shared/research/nvidia_runtime.md records what was observed, with which runtimes);
 *  - the integrity answer's construction (HMAC over MD2 with a published 16-byte key, two
 *    published constants, and a message made of the driver's own answers), as published
 *    by ZLUDA; the HMAC-MD2 itself (hmac_md2.c) is written from RFC 1319 and RFC 2104.
 * No NVIDIA binary was disassembled or decompiled, and no NVIDIA header or code is used.
 * The fake GPU is test equipment: it is never packaged or shipped.
 *
 * Semantics (as observed): a served table's slot 0 is its size in bytes (the context-local
 * storage table has no size); slots the runtime is not known to call are NULL, as in the
 * real tables; slots the runtime is known to have but never seen calling are traps that
 * count and say so, and answer CUDA_ERROR_NOT_SUPPORTED. An unknown table answers
 * CUDA_ERROR_NOT_FOUND with *table = NULL.
 *
 * Knobs (read at the first cuGetExportTable):
 *   FAKE_CUDA_TRACE=1         one stderr line per table asked for and per slot called
 *   FAKE_CUDA_DARKAPI_WITHHOLD=A,B    answer these tables (by name) as unknown (tests)
 *   FAKE_CUDA_DARKAPI_INTEGRITY=wrong answer the integrity check with zeros (tests)
 * The report (FAKE_CUDA_REPORT) counts each table served ("darkapi:NAME"), each slot called
 * ("darkapi:NAME[i]"), and the tables and slots the fake does not know
 * ("darkapi:unknown_table", "darkapi:trap"): the census tests read them. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hmac_md2.h"
#include "libcuda_internal.h"

/* ---- counters, named in the report ------------------------------------------------------- */

#define DARK_COUNTERS(X)                                                                        \
    X(CUDART_INTERFACE, "darkapi:CUDART_INTERFACE")                                            \
    X(CUDART_GET_PRIMARY_CONTEXT, "darkapi:CUDART_INTERFACE[2]")                               \
    X(CUDART_FN7, "darkapi:CUDART_INTERFACE[7]")                                               \
    X(CUDART_LOAD_COMPILERS, "darkapi:CUDART_INTERFACE[12]")                                   \
    X(TOOLS_TLS, "darkapi:TOOLS_TLS")                                                          \
    X(HOOKS, "darkapi:TOOLS_RUNTIME_CALLBACK_HOOKS")                                           \
    X(HOOKS_BUF2, "darkapi:TOOLS_RUNTIME_CALLBACK_HOOKS[2]")                                   \
    X(HOOKS_BUF6, "darkapi:TOOLS_RUNTIME_CALLBACK_HOOKS[6]")                                   \
    X(CLS, "darkapi:CONTEXT_LOCAL_STORAGE")                                                    \
    X(CLS_PUT, "darkapi:CONTEXT_LOCAL_STORAGE[0]")                                             \
    X(CLS_DELETE, "darkapi:CONTEXT_LOCAL_STORAGE[1]")                                          \
    X(CLS_GET, "darkapi:CONTEXT_LOCAL_STORAGE[2]")                                             \
    X(CLS_DTOR, "darkapi:context_local_storage_destructors")                                   \
    X(CHECKS, "darkapi:CONTEXT_CHECKS")                                                        \
    X(CHECKS_CHECK, "darkapi:CONTEXT_CHECKS[2]")                                               \
    X(CHECKS_INIT, "darkapi:CONTEXT_CHECKS[3]")                                                \
    X(INTEGRITY, "darkapi:INTEGRITY_CHECK")                                                    \
    X(INTEGRITY_CHECK, "darkapi:INTEGRITY_CHECK[1]")                                           \
    X(CTX_ID, "darkapi:CONTEXT_ID")                                                            \
    X(CTX_ID_GET, "darkapi:CONTEXT_ID[4]")                                                     \
    X(REFUSED, "darkapi:refused_table")                                                        \
    X(UNKNOWN, "darkapi:unknown_table")                                                        \
    X(TRAP, "darkapi:trap")

enum {
#define X(id, name) D_##id,
    DARK_COUNTERS(X)
#undef X
    N_DARK
};
static uint64_t dark_calls[N_DARK];
static const char *const dark_names[N_DARK] = {
#define X(id, name) name,
    DARK_COUNTERS(X)
#undef X
};

__attribute__((constructor)) static void dark_load(void) { fg_register_calls(dark_names, dark_calls, N_DARK); }

/* ---- knobs ------------------------------------------------------------------------------ */

static int trace_level; /* FAKE_CUDA_TRACE: 0 off, 1 on, 2 `calls` */
static char withheld[256];
static int wrong_integrity;
static pthread_once_t knobs_once = PTHREAD_ONCE_INIT;

static void read_knobs(void) {
    const char *t = getenv("FAKE_CUDA_TRACE");
    trace_level = !t || !*t || strcmp(t, "0") == 0 ? 0 : strcmp(t, "calls") == 0 ? 2 : 1;
    const char *w = getenv("FAKE_CUDA_DARKAPI_WITHHOLD");
    if (w) snprintf(withheld, sizeof withheld, ",%s,", w);
    const char *i = getenv("FAKE_CUDA_DARKAPI_INTEGRITY");
    wrong_integrity = i && strcmp(i, "wrong") == 0;
    if (i && !wrong_integrity)
        fprintf(stderr, "fake-cuda: FAKE_CUDA_DARKAPI_INTEGRITY=\"%s\" is invalid: expected \"wrong\" or unset\n", i);
}

int cu_trace_level(void) {
    pthread_once(&knobs_once, read_knobs);
    return trace_level;
}

#define TRACE(...)                                                   \
    do {                                                             \
        if (trace_level) fprintf(stderr, "fake-cuda darkapi: " __VA_ARGS__); \
    } while (0)

static void called(int counter, const char *what) {
    FG_COUNT(dark_calls, counter);
    TRACE("%s called\n", what);
}

/* ---- traps: slots that exist in the real table but were never seen called ---------------- */

#define TRAP(table, slot)                                                                      \
    static CUresult trap_##table##_##slot(void) {                                              \
        FG_COUNT(dark_calls, D_TRAP);                                                          \
        fprintf(stderr, "fake-cuda darkapi: %s[%d] was called; the fake does not know this "   \
                        "slot (answered CUDA_ERROR_NOT_SUPPORTED)\n", #table, slot);           \
        return CUDA_ERROR_NOT_SUPPORTED;                                                       \
    }
TRAP(CUDART_INTERFACE, 1)
TRAP(CUDART_INTERFACE, 6)
TRAP(CUDART_INTERFACE, 8)
TRAP(TOOLS_RUNTIME_CALLBACK_HOOKS, 1)
TRAP(TOOLS_RUNTIME_CALLBACK_HOOKS, 4)
TRAP(CONTEXT_CHECKS, 1)
TRAP(INTEGRITY_CHECK, 2)
#define TRAPPED(table, slot) ((void *)trap_##table##_##slot)

/* ---- CUDART_INTERFACE --------------------------------------------------------------------- */

/* [2]: the device's primary context, *not* activated (no retain): cudart retains it itself. */
static CUresult cudart_get_primary_context(CUcontext *out, CUdevice dev) {
    called(D_CUDART_GET_PRIMARY_CONTEXT, "CUDART_INTERFACE[2] get_primary_context");
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!cu_valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *out = cu_primary_ctx(dev);
    return CUDA_SUCCESS;
}

static void cudart_fn7(size_t arg) {
    (void)arg;
    called(D_CUDART_FN7, "CUDART_INTERFACE[7]");
}

/* [12] (13.1+): loads the JIT compilers in the real driver; there is nothing to load here. */
static CUresult cudart_load_compilers(void) {
    called(D_CUDART_LOAD_COMPILERS, "CUDART_INTERFACE[12] load_compilers");
    return CUDA_SUCCESS;
}

static void *cudart_interface[13] = {
    (void *)sizeof cudart_interface,
    TRAPPED(CUDART_INTERFACE, 1),
    (void *)cudart_get_primary_context,
    NULL, NULL, NULL,
    TRAPPED(CUDART_INTERFACE, 6),
    (void *)cudart_fn7,
    TRAPPED(CUDART_INTERFACE, 8),
    NULL, NULL, NULL,
    (void *)cudart_load_compilers,
};

/* ---- TOOLS_TLS: present, with its size; no slot is called ---------------------------------- */

static void *tools_tls[4] = {(void *)sizeof tools_tls, NULL, NULL, NULL};

/* ---- TOOLS_RUNTIME_CALLBACK_HOOKS: two zeroed buffers the runtime writes into -------------- */

static uint32_t hook_buf2[1024], hook_buf6[14];

static void hooks_buf2(void **buf, size_t *count) {
    called(D_HOOKS_BUF2, "TOOLS_RUNTIME_CALLBACK_HOOKS[2]");
    if (buf) *buf = hook_buf2;
    if (count) *count = sizeof hook_buf2 / sizeof hook_buf2[0];
}

static void hooks_buf6(void **buf, size_t *count) {
    called(D_HOOKS_BUF6, "TOOLS_RUNTIME_CALLBACK_HOOKS[6]");
    if (buf) *buf = hook_buf6;
    if (count) *count = sizeof hook_buf6 / sizeof hook_buf6[0];
}

static void *tools_hooks[7] = {
    (void *)sizeof tools_hooks,
    TRAPPED(TOOLS_RUNTIME_CALLBACK_HOOKS, 1),
    (void *)hooks_buf2,
    NULL,
    TRAPPED(TOOLS_RUNTIME_CALLBACK_HOOKS, 4),
    NULL,
    (void *)hooks_buf6,
};

/* ---- CONTEXT_LOCAL_STORAGE: values keyed by (context, key), destructors on reset ----------- */

typedef void (*cls_dtor)(CUcontext ctx, void *key, void *value);
struct cls_entry { CUcontext ctx; void *key, *value; cls_dtor dtor; };
static struct cls_entry *cls;
static size_t n_cls, cap_cls;
static pthread_mutex_t cls_lock = PTHREAD_MUTEX_INITIALIZER;

/* NULL means the calling thread's current context. */
static CUresult cls_context(CUcontext *ctx) {
    CUresult rc = cu_initialized();
    if (rc) return rc;
    if (!*ctx) *ctx = cu_current_ctx();
    return *ctx ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

static struct cls_entry *cls_find(CUcontext ctx, void *key) {
    for (size_t i = 0; i < n_cls; i++)
        if (cls[i].ctx == ctx && cls[i].key == key) return &cls[i];
    return NULL;
}

static CUresult cls_put(CUcontext ctx, void *key, void *value, cls_dtor dtor) {
    called(D_CLS_PUT, "CONTEXT_LOCAL_STORAGE[0] put");
    CUresult rc = cls_context(&ctx);
    if (rc) return rc;
    pthread_mutex_lock(&cls_lock);
    struct cls_entry *e = cls_find(ctx, key);
    if (!e && n_cls == cap_cls) {
        struct cls_entry *grown = realloc(cls, (cap_cls * 2 + 8) * sizeof *cls);
        if (!grown) {
            pthread_mutex_unlock(&cls_lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        cls = grown;
        cap_cls = cap_cls * 2 + 8;
    }
    if (!e) e = &cls[n_cls++];
    *e = (struct cls_entry){ctx, key, value, dtor};
    pthread_mutex_unlock(&cls_lock);
    return CUDA_SUCCESS;
}

static CUresult cls_delete(CUcontext ctx, void *key) {
    called(D_CLS_DELETE, "CONTEXT_LOCAL_STORAGE[1] delete");
    CUresult rc = cls_context(&ctx);
    if (rc) return rc;
    pthread_mutex_lock(&cls_lock);
    struct cls_entry *e = cls_find(ctx, key);
    if (e) *e = cls[--n_cls];
    pthread_mutex_unlock(&cls_lock);
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

static CUresult cls_get(void **value, CUcontext ctx, void *key) {
    called(D_CLS_GET, "CONTEXT_LOCAL_STORAGE[2] get");
    CUresult rc = cls_context(&ctx);
    if (rc) return rc;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&cls_lock);
    struct cls_entry *e = cls_find(ctx, key);
    if (e) *value = e->value;
    pthread_mutex_unlock(&cls_lock);
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

/* The context's state is gone (primary reset or last release, cuCtxDestroy): its values
 * are removed and their destructors run, outside the lock (they may put again). */
void cu_cls_context_gone(CUcontext ctx) {
    for (;;) {
        pthread_mutex_lock(&cls_lock);
        struct cls_entry gone = {0};
        for (size_t i = 0; i < n_cls; i++)
            if (cls[i].ctx == ctx) {
                gone = cls[i];
                cls[i] = cls[--n_cls];
                break;
            }
        pthread_mutex_unlock(&cls_lock);
        if (!gone.ctx) return;
        if (gone.dtor) {
            called(D_CLS_DTOR, "a context-local storage destructor");
            gone.dtor(gone.ctx, gone.key, gone.value);
        }
    }
}

static void *context_local_storage[4] = {(void *)cls_put, (void *)cls_delete, (void *)cls_get, NULL};

/* ---- CONTEXT_CHECKS ------------------------------------------------------------------------ */

static CUresult checks_check(CUcontext ctx, uint32_t *out, void **out2) {
    (void)ctx;
    (void)out2;
    called(D_CHECKS_CHECK, "CONTEXT_CHECKS[2] check");
    if (out) *out = 0;
    return CUDA_SUCCESS;
}

static uint32_t checks_init(void) {
    called(D_CHECKS_INIT, "CONTEXT_CHECKS[3]");
    return 0;
}

static void *context_checks[4] = {(void *)sizeof context_checks, TRAPPED(CONTEXT_CHECKS, 1),
                                  (void *)checks_check, (void *)checks_init};

/* ---- INTEGRITY_CHECK ------------------------------------------------------------------------ */

static const unsigned char INTEGRITY_KEY[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                                0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
static void *integrity_table[3];

/* The runtime recomputes this from what the driver told it, so it is computed over the
 * fake's own answers: version, process, thread, table addresses, and each visible
 * device's UUID and PCI location. */
static CUresult integrity_check(uint32_t version, uint64_t unix_seconds, uint64_t out[2]) {
    called(D_INTEGRITY_CHECK, "INTEGRITY_CHECK[1] check");
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (wrong_integrity) {
        out[0] = out[1] = 0;
        return CUDA_SUCCESS;
    }
    if (version % 10 == 0 || version % 10 == 1) {
        out[0] = version % 10 == 0 ? 0x3341181c03cb675cull : 0x1841181c03cb675cull;
        out[1] = 0x8ed383aa1f4cd1e8ull;
        return CUDA_SUCCESS;
    }
    unsigned char msg[48 + 28 * FG_MAX_DEVICES];
    struct __attribute__((packed)) {
        uint32_t driver_version, version, pid, thread;
        const void *cudart_table, *integrity_table, *integrity_fn;
        uint64_t unix_seconds;
    } head = {(uint32_t)cu_driver_version(), version, (uint32_t)getpid(), (uint32_t)pthread_self(),
              cudart_interface, integrity_table, integrity_table[1], unix_seconds};
    _Static_assert(sizeof head == 48, "the message header is 48 bytes");
    memcpy(msg, &head, sizeof head);
    size_t len = sizeof head;
    int count = cu_initialized() == CUDA_SUCCESS ? cu_visible_count() : 0;
    for (int d = 0; d < count; d++) {
        unsigned char uuid[16];
        int32_t pci[3] = {cu_attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d),
                          cu_attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d),
                          cu_attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d)};
        fg_device_uuid(cu_phys(d), uuid);
        memcpy(msg + len, uuid, 16);
        memcpy(msg + len + 16, pci, sizeof pci);
        len += 28;
    }
    unsigned char digest[16];
    fg_hmac_md2(INTEGRITY_KEY, sizeof INTEGRITY_KEY, msg, len, digest);
    memcpy(out, digest, 16);
    return CUDA_SUCCESS;
}

static void *integrity_table[3] = {(void *)sizeof integrity_table, (void *)integrity_check,
                                   TRAPPED(INTEGRITY_CHECK, 2)};

/* ---- CONTEXT_ID (21318c60, asked for by cuBLAS and XLA): [4] is cuCtxGetId --------------- */

static CUresult context_id(CUcontext ctx, unsigned long long *id) {
    called(D_CTX_ID_GET, "CONTEXT_ID[4]");
    return cu_context_id(ctx, id);
}

static void *context_id_table[5] = {(void *)sizeof context_id_table, NULL, NULL, NULL,
                                    (void *)context_id};

/* ---- the directory --------------------------------------------------------------------------- */

static const struct table {
    const char *name;
    unsigned char uuid[16];
    void **table; /* NULL: known, refused with CUDA_ERROR_NOT_FOUND (the runtime copes) */
    int counter;
} tables[] = {
    {"CUDART_INTERFACE", {0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9},
     cudart_interface, D_CUDART_INTERFACE},
    {"TOOLS_RUNTIME_CALLBACK_HOOKS", {0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a, 0x66},
     tools_hooks, D_HOOKS},
    {"TOOLS_TLS", {0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc},
     tools_tls, D_TOOLS_TLS},
    {"CONTEXT_LOCAL_STORAGE", {0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93},
     context_local_storage, D_CLS},
    {"CONTEXT_CHECKS", {0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e},
     context_checks, D_CHECKS},
    {"INTEGRITY_CHECK", {0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2},
     integrity_table, D_INTEGRITY},
    {"CONTEXT_ID", {0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2},
     context_id_table, D_CTX_ID},
    /* Asked for by runtimes 12.9+ before cuInit; refusing it is harmless. */
    {"REQUIREMENTS", {0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9},
     NULL, D_REFUSED},
    /* CUPTI's, during JAX's version check; and one CuPy asks for. Refusing both is harmless. */
    {"CUPTI", {0x7c, 0xb6, 0x3f, 0x9b, 0x9c, 0xa4, 0x8e, 0x42, 0xa4, 0x84, 0xbe, 0xb6, 0x6e, 0x6a, 0xed, 0x7f},
     NULL, D_REFUSED},
    {"CUPY", {0xda, 0x91, 0x51, 0xd3, 0x3a, 0xe6, 0xcc, 0x41, 0xa5, 0xc0, 0x4f, 0x26, 0xd5, 0x33, 0xe3, 0x28},
     NULL, D_REFUSED},
};

static void uuid_text(const unsigned char *u, char out[37]) {
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
}

static int is_withheld(const char *name) {
    char probe[64];
    snprintf(probe, sizeof probe, ",%s,", name);
    return withheld[0] && strstr(withheld, probe) != NULL;
}

/* Works before cuInit: the runtime asks for the first table before initializing. */
EXPORT CUresult cuGetExportTable(const void **table, const CUuuid *id) {
    COUNT(cuGetExportTable);
    pthread_once(&knobs_once, read_knobs);
    if (!table || !id) return CUDA_ERROR_INVALID_VALUE;
    *table = NULL;
    char text[37];
    uuid_text((const unsigned char *)id->bytes, text);
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        const struct table *t = &tables[i];
        if (memcmp(t->uuid, id->bytes, 16) != 0) continue;
        if (!t->table || is_withheld(t->name)) {
            FG_COUNT(dark_calls, D_REFUSED);
            TRACE("table %s (%s) refused: CUDA_ERROR_NOT_FOUND\n", text, t->name);
            return CUDA_ERROR_NOT_FOUND;
        }
        FG_COUNT(dark_calls, t->counter);
        TRACE("table %s (%s) served\n", text, t->name);
        *table = t->table;
        return CUDA_SUCCESS;
    }
    FG_COUNT(dark_calls, D_UNKNOWN);
    fprintf(stderr, "fake-cuda darkapi: unknown table %s asked for (answered CUDA_ERROR_NOT_FOUND)\n", text);
    return CUDA_ERROR_NOT_FOUND;
}
