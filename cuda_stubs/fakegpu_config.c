/* FAKE_CUDA_* environment: parsed once, every bad value reported with the accepted forms. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    "(powers of 1024), or KB/MB/GB/TB (powers of 1000), e.g. 16GiB";

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

/* Fills `c` from the environment; -1 after one message per bad variable. */
int fg_config_from_env(fg_config_t *c) {
    *c = (fg_config_t){.device_mem = 16ull << 30, .device_count = 1, .managed = 1, .pools = 1};
    int rc = 0;
    const char *v = getenv("FAKE_CUDA_DEVICE_MEM");
    if (v && (fg_parse_size(v, &c->device_mem) != 0 || c->device_mem == 0))
        rc = bad("FAKE_CUDA_DEVICE_MEM", v, SIZE_FORMS);
    v = getenv("FAKE_CUDA_DEVICE_COUNT");
    if (v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*v < '0' || *v > '9' || *end || n > FG_MAX_DEVICES)
            rc = bad("FAKE_CUDA_DEVICE_COUNT", v, "expected a device count from 0 to 16");
        else
            c->device_count = (int)n;
    }
    rc |= parse_flag("FAKE_CUDA_MANAGED", &c->managed);
    rc |= parse_flag("FAKE_CUDA_POOLS", &c->pools);
    rc |= parse_path("FAKE_CUDA_REPORT", &c->report_path);
    rc |= parse_path("FAKE_CUDA_STATE", &c->state_path);
    return rc ? -1 : 0;
}
