/*
 * secfile.c - start-up checks of secret and trust files (secfile.h). The
 * file is opened, not only stat()ed, so the answer is the one the library
 * that reads it later will get; mode, owner and ACL are read from that same
 * open file.
 *
 * A POSIX ACL changes what the mode says: with one, the group bits of
 * st_mode are the ACL's mask, and users and groups named in the ACL may
 * read the file whatever the mode. systemd hands credentials out that way
 * on file systems that support ACLs (mode 0400 owned by root, plus an entry
 * for the service's user, which shows as 0440), so the ACL itself is read
 * (the kernel's xattr format, linux/posix_acl_xattr.h) instead of refusing
 * every file that has one.
 */
#include "secfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "util.h"

#define ACL_XATTR "system.posix_acl_access"
#define ACL_XATTR_VERSION 2
#define ACL_MAX_ENTRIES 64

/* The tags of the kernel's ACL entries (linux/posix_acl.h). */
enum {
    ACL_TAG_USER_OBJ = 0x01,
    ACL_TAG_USER = 0x02,
    ACL_TAG_GROUP_OBJ = 0x04,
    ACL_TAG_GROUP = 0x08,
    ACL_TAG_MASK = 0x10,
    ACL_TAG_OTHER = 0x20,
};

/* Open path as a regular file; its fd (and *st), or -errno with err set. */
static int open_regular(const char *path, struct stat *st, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        fmt_err(err, errlen, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        fmt_err(err, errlen, "cannot read %s: %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        fmt_err(err, errlen, "%s is not a regular file", path);
        return -EINVAL;
    }
    return fd;
}

int secfile_check_readable(const char *path, char *err, size_t errlen)
{
    struct stat st;
    int fd = open_regular(path, &st, err, errlen);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

static uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* whom: "its group", "user 1001", ... */
static int acl_refuse(const char *path, const char *whom, char *err, size_t errlen)
{
    fmt_err(err, errlen,
            "%s: its ACL lets %s access it: a file holding a secret must be readable by its "
            "owner only; run setfacl -b %s && chmod 600 %s (or use a systemd credential)",
            path, whom, path, path);
    return -EPERM;
}

/* The file's ACL, when it has one: 0 when it grants nobody but the owner
 * and this process's user, 1 when the file has no ACL, else -EPERM with
 * the reason in err. */
static int check_acl(int fd, const char *path, char *err, size_t errlen)
{
    unsigned char buf[4 + 8 * ACL_MAX_ENTRIES];
    char whom[64];
    ssize_t n = fgetxattr(fd, ACL_XATTR, buf, sizeof(buf));
    if (n < 0 && errno == ERANGE)
        return acl_refuse(path, "too many users and groups to check", err, errlen);
    if (n < 0) /* ENODATA: no ACL; ENOTSUP: the file system has none */
        return 1;
    if (n < 4 || (n - 4) % 8 != 0 || le32(buf) != ACL_XATTR_VERSION)
        return acl_refuse(path, "users this daemon cannot tell (an ACL format it does not know)",
                          err, errlen);
    unsigned mask = 7;
    for (ssize_t off = 4; off < n; off += 8) {
        if (le16(buf + off) == ACL_TAG_MASK)
            mask = le16(buf + off + 2);
    }
    uid_t me = geteuid();
    for (ssize_t off = 4; off < n; off += 8) {
        unsigned tag = le16(buf + off), perm = le16(buf + off + 2) & mask;
        uint32_t id = le32(buf + off + 4);
        if (tag == ACL_TAG_GROUP_OBJ && perm != 0)
            return acl_refuse(path, "its group", err, errlen);
        snprintf(whom, sizeof(whom), "%s %u", tag == ACL_TAG_GROUP ? "group" : "user", id);
        if ((tag == ACL_TAG_GROUP || (tag == ACL_TAG_USER && id != me)) && perm != 0)
            return acl_refuse(path, whom, err, errlen);
    }
    return 0;
}

int secfile_check_private(const char *path, char *err, size_t errlen)
{
    struct stat st;
    int fd = open_regular(path, &st, err, errlen);
    if (fd < 0)
        return fd;
    int rc = check_acl(fd, path, err, errlen);
    close(fd);
    if (rc < 0)
        return rc;
    uid_t me = geteuid();
    mode_t open_to = rc == 1 ? 077 : 007; /* with an ACL, the group bits are its mask */
    if ((st.st_mode & open_to) != 0) {
        /* Owned by root and opened to the daemon's group: closing the group
         * out alone would lock the daemon out too. */
        if (st.st_uid != me)
            fmt_err(err, errlen,
                    "%s has mode %04o: a file holding a secret must not be accessible by group "
                    "or others; run chown %u %s && chmod 600 %s (or use a systemd credential)",
                    path, (unsigned)(st.st_mode & 07777), (unsigned)me, path, path);
        else
            fmt_err(err, errlen,
                    "%s has mode %04o: a file holding a secret must not be accessible by group "
                    "or others; run chmod 600 %s (or use a systemd credential)",
                    path, (unsigned)(st.st_mode & 07777), path);
        return -EPERM;
    }
    if (st.st_uid != me && st.st_uid != 0) {
        fmt_err(err, errlen,
                "%s is owned by uid %u: a file holding a secret must belong to the user the "
                "daemon runs as (uid %u) or to root, or its owner can read and replace it; "
                "run chown %u %s (or use a systemd credential)",
                path, (unsigned)st.st_uid, (unsigned)me, (unsigned)me, path);
        return -EPERM;
    }
    return 0;
}
