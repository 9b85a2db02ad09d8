/* Shared by the probe programs. */
#ifndef CUVISOR_PROBE_UTIL_H
#define CUVISOR_PROBE_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A size argument: bytes, or with K/M/G (KiB/MiB/GiB). Exits on anything else. */
static unsigned long long size_arg(const char *s) {
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (!strcmp(end, "K") || !strcmp(end, "KiB")) n <<= 10;
    else if (!strcmp(end, "M") || !strcmp(end, "MiB")) n <<= 20;
    else if (!strcmp(end, "G") || !strcmp(end, "GiB")) n <<= 30;
    else if (*end) {
        printf("bad size %s\n", s);
        exit(2);
    }
    return n;
}

#endif
