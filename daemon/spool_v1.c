/*
 * spool_v1.c - the spool's first format, one file per result (spool_v1.h).
 * Only read: spool.c migrates such files into segments at open.
 */
#include "spool_v1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "spool.h"
#include "util.h"

#define MAGIC "AVTSPOOL"
#define VERSION 1
#define HEADER_MAX 4096

struct spool_record *spool_v1_parse(const char *buf, size_t size, const char **why)
{
    const char *nl = memchr(buf, '\n', size < HEADER_MAX ? size : HEADER_MAX);
    char url[HEADER_MAX];
    int version, used = 0;
    size_t len;
    unsigned long crc;
    double created;
    *why = "truncated or not a spool file";
    if (nl == NULL || strncmp(buf, MAGIC " ", strlen(MAGIC) + 1) != 0)
        return NULL;
    char *hdr = xstrndup(buf, (size_t)(nl - buf));
    int n =
        sscanf(hdr, MAGIC " %d %zu %lx %lf %4095s%n", &version, &len, &crc, &created, url, &used);
    int hdr_ok = n == 5 && (size_t)used == strlen(hdr);
    free(hdr);
    if (hdr_ok && version != VERSION)
        *why = "of an unknown spool version";
    if (!hdr_ok || version != VERSION)
        return NULL;
    const char *body = nl + 1;
    if ((size_t)(buf + size - body) != len)
        return NULL;
    *why = "damaged (checksum mismatch)";
    if (spool_crc32(body, len) != crc)
        return NULL;
    const char *tid, *jid;
    json_t *j = spool_result_ids(body, len, &tid, &jid);
    *why = "not a result body";
    if (j == NULL)
        return NULL;
    struct spool_record *rec = spool_record_new(url, tid, jid, body, len);
    rec->created = created;
    json_decref(j);
    return rec;
}
