/*
 * spool_v1.h - the spool's version-1 format: one file "<seq>.res" per
 * result, a header line "AVTSPOOL 1 <len> <crc> <created> <url>" and the
 * result body. Versions before the segment log wrote it; spool_open()
 * takes such files over (spool.h). Pure; any input is safe.
 */
#ifndef AVT_DAEMON_SPOOL_V1_H
#define AVT_DAEMON_SPOOL_V1_H

#include <stddef.h>

struct spool_record;

#define SPOOL_V1_SUFFIX ".res"

/* Parse the bytes of a version-1 file: a new record (free it with
 * spool_record_free()), or NULL with *why saying what is wrong with it. */
struct spool_record *spool_v1_parse(const char *buf, size_t size, const char **why);

#endif /* AVT_DAEMON_SPOOL_V1_H */
