/*
 * spool_v1.c - the spool's first format, one file per result (spool_v1.h).
 * Only read: spool.c migrates such files into segments at open.
 */
#include "spool_v1.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MAGIC "AVTSPOOL"
#define VERSION 1

int spool_v1_parse(const char *buf, size_t size, struct spool_v1_file *out, const char **why)
{
    const char *nl = memchr(buf, '\n', size < SPOOL_V1_HEADER_MAX ? size : SPOOL_V1_HEADER_MAX);
    int version, used = 0;
    *why = "truncated or not a spool file";
    if (nl == NULL || strncmp(buf, MAGIC " ", strlen(MAGIC) + 1) != 0)
        return -EINVAL;
    char *hdr = xstrndup(buf, (size_t)(nl - buf));
    int n = sscanf(hdr, MAGIC " %d %zu %lx %lf %4095s%n", &version, &out->len, &out->crc,
                   &out->created, out->url, &used);
    int hdr_ok = n == 5 && (size_t)used == strlen(hdr);
    free(hdr);
    if (hdr_ok && version != VERSION)
        *why = "of an unknown spool version";
    if (!hdr_ok || version != VERSION)
        return -EINVAL;
    out->body = nl + 1;
    if ((size_t)(buf + size - out->body) != out->len)
        return -EINVAL;
    return 0;
}
