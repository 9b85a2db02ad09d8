/* FAKE_CUDA_* environment: parsed once, every bad value reported with the accepted forms. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fakegpu.h"

int fg_parse_size(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno) return -1;
    static const struct { const char *suffix; uint64_t mult; } units[] = {
        {"", 1},
        {"K", 1ull << 10}, {"M", 1ull << 20}, {"G", 1ull << 30}, {"T", 1ull << 40},
        {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}, {"TiB", 1ull << 40},
        {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull}, {"TB", 1000000000000ull},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            if (n > UINT64_MAX / units[i].mult) return -1;
            *out = n * units[i].mult;
            return 0;
        }
    }
    return -1;
}

static int bad(const char *var, const char *value, const char *accepted) {
    fprintf(stderr, "fake-cuda: %s=\"%s\" is invalid: %s; CUDA initialization fails\n", var, value,
            accepted);
    return -1;
}

static const char SIZE_FORMS[] =
    "expected a size greater than 0: bytes (17179869184), K/M/G/T or KiB/MiB/GiB/TiB "
    "(powers of 1024), or KB/MB/GB/TB (powers of 1000), e.g. 16GiB; or a comma-separated "
    "list of such sizes, one per device";

static int parse_flag(const char *var, int *out) {
    const char *v = getenv(var);
    if (!v) return 0;
    if (strcmp(v, "0") == 0 || strcmp(v, "1") == 0) {
        *out = v[0] == '1';
        return 0;
    }
    return bad(var, v, "expected 0 or 1");
}

static int parse_path(const char *var, const char **out) {
    const char *v = getenv(var);
    if (!v) return 0;
    if (!*v) return bad(var, v, "expected a file path");
    *out = v;
    return 0;
}

/* FAKE_CUDA_DEVICE_MEM: one size for every device, or one per device. */
static int parse_device_mem(fg_config_t *c, int count_ok) {
    const char *v = getenv("FAKE_CUDA_DEVICE_MEM");
    uint64_t sizes[FG_MAX_DEVICES];
    int n = 0;
    if (!v) {
        sizes[n++] = 16ull << 30;
    } else {
        for (const char *p = v;; n++) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            char item[64];
            if (n == FG_MAX_DEVICES || len >= sizeof item) return bad("FAKE_CUDA_DEVICE_MEM", v, SIZE_FORMS);
            memcpy(item, p, len);
            item[len] = 0;
            if (fg_parse_size(item, &sizes[n]) != 0 || sizes[n] == 0)
                return bad("FAKE_CUDA_DEVICE_MEM", v, SIZE_FORMS);
            if (!comma) {
                n++;
                break;
            }
            p = comma + 1;
        }
    }
    if (!count_ok) return 0; /* FAKE_CUDA_DEVICE_COUNT was reported already */
    if (n != 1 && n != c->device_count) {
        char why[160];
        snprintf(why, sizeof why,
                 "expected one size for every device, or a comma-separated list of one size "
                 "per device: %d of them (FAKE_CUDA_DEVICE_COUNT=%d)",
                 c->device_count, c->device_count);
        return bad("FAKE_CUDA_DEVICE_MEM", v, why);
    }
    for (int i = 0; i < c->device_count; i++) c->device_mem[i] = sizes[n == 1 ? 0 : i];
    return 0;
}

static int driver_version;
static pthread_once_t driver_version_once = PTHREAD_ONCE_INIT;

/* major * 1000 + minor * 10, as CUDA writes versions: 12090 is 12.9, 13020 is 13.2. */
static void parse_driver_version(void) {
    const char *v = getenv("FAKE_CUDA_DRIVER_VERSION");
    driver_version = FG_DRIVER_VERSION_DEFAULT;
    if (!v) return;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (*v < '0' || *v > '9' || *end || errno || n < 11000 || n > 99990 || n % 10) {
        bad("FAKE_CUDA_DRIVER_VERSION", v,
            "expected a CUDA version as major*1000 + minor*10, from 11000 to 99990, e.g. 12090 "
            "for 12.9 or 13020 for 13.2");
        driver_version = -1;
        return;
    }
    driver_version = (int)n;
}

int fg_driver_version(void) {
    pthread_once(&driver_version_once, parse_driver_version);
    return driver_version;
}

/* Fills `c` from the environment; -1 after one message per bad variable. */
int fg_config_from_env(fg_config_t *c) {
    *c = (fg_config_t){.device_count = 1, .managed = 1, .pools = 1};
    int rc = 0;
    const char *v = getenv("FAKE_CUDA_DEVICE_COUNT");
    if (v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*v < '0' || *v > '9' || *end || n > FG_MAX_DEVICES)
            rc = bad("FAKE_CUDA_DEVICE_COUNT", v, "expected a device count from 0 to 16");
        else
            c->device_count = (int)n;
    }
    rc |= parse_device_mem(c, rc == 0);
    rc |= parse_flag("FAKE_CUDA_MANAGED", &c->managed);
    rc |= parse_flag("FAKE_CUDA_POOLS", &c->pools);
    v = getenv("FAKE_CUDA_NVML_UNITS");
    if (v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*v < '0' || *v > '9' || *end || n > FG_MAX_DEVICES)
            rc |= bad("FAKE_CUDA_NVML_UNITS", v, "expected a number of units from 0 to 16");
        else
            c->nvml_units = (int)n;
    }
    v = getenv("FAKE_CUDA_LINK_GBPS");
    if (v) {
        char *end;
        errno = 0;
        double g = strtod(v, &end);
        if (*v < '0' || *v > '9' || *end || errno || !(g > 0) || g > 10000)
            rc |= bad("FAKE_CUDA_LINK_GBPS", v,
                      "expected the link's speed in GB/s, greater than 0, e.g. 25 for PCIe 4.0 "
                      "x16 or 50 for PCIe 5.0");
        else
            c->link_gbps = g;
    }
    if (fg_driver_version() < 0) rc = -1;
    rc |= parse_path("FAKE_CUDA_REPORT", &c->report_path);
    rc |= parse_path("FAKE_CUDA_STATE", &c->state_path);
    return rc ? -1 : 0;
}

/* ---- device identity ---------------------------------------------------------------- */

/* splitmix64: a fixed, well-mixed function of the physical index, so that UUIDs differ
 * from their first digit on and never change between builds or runs. */
static uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define UUID_SEED 0x63757669736f7266ull /* "cuvisorf" */

void fg_device_uuid(int phys, unsigned char out[16]) {
    for (int half = 0; half < 2; half++) {
        uint64_t w = mix(UUID_SEED + 2 * (uint64_t)phys + (uint64_t)half);
        for (int k = 0; k < 8; k++) out[half * 8 + k] = (unsigned char)(w >> (56 - 8 * k));
    }
    out[6] = (unsigned char)(0x40 | (out[6] & 0x0f)); /* RFC 4122: version 4 (random) */
    out[8] = (unsigned char)(0x80 | (out[8] & 0x3f)); /* RFC 4122 variant */
}

void fg_device_uuid_text(int phys, char out[FG_UUID_TEXT_LEN]) {
    unsigned char u[16];
    fg_device_uuid(phys, u);
    snprintf(out, FG_UUID_TEXT_LEN,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

int fg_device_by_uuid_prefix(const char *s, size_t len) {
    if (len >= 4 && strncmp(s, "GPU-", 4) == 0) {
        s += 4;
        len -= 4;
    }
    if (len == 0 || len > FG_UUID_TEXT_LEN - 5) return -1;
    int found = -1;
    for (int d = 0; d < fg_config()->device_count; d++) {
        char text[FG_UUID_TEXT_LEN];
        fg_device_uuid_text(d, text);
        if (strncasecmp(text + 4, s, len) != 0) continue;
        if (found >= 0) return -2;
        found = d;
    }
    return found;
}

/* One hex field of a PCI bus id; advances *p. -1 if there is no hex digit. */
static long hex_field(const char **p) {
    char *end;
    if (!isxdigit((unsigned char)**p)) return -1;
    errno = 0;
    unsigned long v = strtoul(*p, &end, 16);
    if (errno || end - *p > 8) return -1;
    *p = end;
    return (long)v;
}

int fg_device_by_pci_bus_id(const char *s) {
    if (!s) return -2;
    long f[4];
    char seps[4] = {0};
    int n = 0;
    const char *p = s;
    for (;;) {
        if (n == 4 || (f[n] = hex_field(&p)) < 0) return -2;
        n++;
        if (*p == 0) break;
        if (*p != ':' && *p != '.') return -2;
        seps[n - 1] = *p++;
    }
    long domain, bus, device, function = 0;
    if (n == 4 && seps[0] == ':' && seps[1] == ':' && seps[2] == '.') {
        domain = f[0], bus = f[1], device = f[2], function = f[3];
    } else if (n == 3 && seps[0] == ':' && seps[1] == ':') {
        domain = f[0], bus = f[1], device = f[2];
    } else if (n == 3 && seps[0] == ':' && seps[1] == '.') {
        domain = 0, bus = f[0], device = f[1], function = f[2];
    } else {
        return -2;
    }
    for (int d = 0; d < fg_config()->device_count; d++)
        if (domain == 0 && bus == FG_PCI_BUS(d) && device == 0 && function == 0) return d;
    return -1;
}
