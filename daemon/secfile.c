/*
 * secfile.c - start-up checks of secret and trust files (secfile.h). The
 * file is opened, not only stat()ed, so the answer is the one the library
 * that reads it later will get.
 */
#include "secfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

int secfile_check_readable(const char *path, char *err, size_t errlen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        fmt_err(err, errlen, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    int rc = fstat(fd, &st);
    int e = errno;
    close(fd);
    if (rc < 0) {
        fmt_err(err, errlen, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        fmt_err(err, errlen, "%s is not a regular file", path);
        return -EINVAL;
    }
    return 0;
}

int secfile_check_private(const char *path, char *err, size_t errlen)
{
    struct stat st;
    int rc = secfile_check_readable(path, err, errlen);
    if (rc < 0)
        return rc;
    if (stat(path, &st) < 0) {
        int e = errno;
        fmt_err(err, errlen, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    if ((st.st_mode & 077) != 0) {
        fmt_err(err, errlen,
                "%s has mode %04o: a private key must not be accessible by group or others; "
                "run chmod 600 %s (or use a systemd credential)",
                path, (unsigned)(st.st_mode & 07777), path);
        return -EPERM;
    }
    return 0;
}
