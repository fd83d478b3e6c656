/*
 * secfile.h - start-up checks of the files the configuration names that
 * hold secrets or trust anchors: a CA bundle or certificate must be a
 * readable regular file; a private key, a token file or a signing key file
 * must also be closed to everyone but its owner, because it is the worker's
 * identity. cfg.c calls them while it loads, so a bad file is a
 * configuration error (exit 78 at start; a reload keeps the running
 * configuration) that names the fix.
 */
#ifndef AVT_DAEMON_SECFILE_H
#define AVT_DAEMON_SECFILE_H

#include <stddef.h>

/* A file a library will read (CA bundle, certificate): a readable regular
 * file. Returns 0 or -errno with the reason in err. */
int secfile_check_readable(const char *path, char *err, size_t errlen);

/* A private file (client key, token file): readable, regular, owned by the
 * daemon's user or root, and nobody else may access it: mode & 077 == 0, or,
 * with a POSIX ACL, no access for the group, other groups or users other
 * than the daemon's (what a systemd credential carries). Returns 0, or
 * -errno / -EPERM with the reason (naming the fix) in err. */
int secfile_check_private(const char *path, char *err, size_t errlen);

#endif /* AVT_DAEMON_SECFILE_H */
