/*
 * spool_v1.h - the spool's version-1 format: one file "<seq>.res" per
 * result, a header line "AVTSPOOL 1 <len> <crc> <created> <url>" and the
 * result body. Versions before the segment log wrote it; spool_open()
 * takes such files over (spool.h), checking the CRC-32 and the body.
 * Pure; any input is safe.
 */
#ifndef AVT_DAEMON_SPOOL_V1_H
#define AVT_DAEMON_SPOOL_V1_H

#include <stddef.h>

#define SPOOL_V1_SUFFIX ".res"
#define SPOOL_V1_HEADER_MAX 4096

/* A version-1 file's parts; body points into the parsed buffer. */
struct spool_v1_file {
    char url[SPOOL_V1_HEADER_MAX];
    const char *body;
    size_t len;
    unsigned long crc; /* of the body, as the header states it */
    double created;    /* unix seconds */
};

/* Parse the bytes of a version-1 file into *out: 0, or -EINVAL with *why
 * saying what is wrong with it. */
int spool_v1_parse(const char *buf, size_t size, struct spool_v1_file *out, const char **why);

#endif /* AVT_DAEMON_SPOOL_V1_H */
