/*
 * notify.c - sd_notify(3) over a unix datagram socket, written out because
 * the protocol is one sendto() and libsystemd would be a dependency for it.
 * WATCHDOG_PID is honoured: a watchdog meant for another process is ignored.
 */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen;
static double watchdog_interval;

void notify_init(void)
{
    notify_addrlen = 0;
    watchdog_interval = 0;
    const char *path = getenv("NOTIFY_SOCKET");
    if (path != NULL && (path[0] == '/' || path[0] == '@') &&
        strlen(path) < sizeof(notify_addr.sun_path)) {
        memset(&notify_addr, 0, sizeof(notify_addr));
        notify_addr.sun_family = AF_UNIX;
        memcpy(notify_addr.sun_path, path, strlen(path));
        if (path[0] == '@')
            notify_addr.sun_path[0] = '\0';
        notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    }
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    if (usec != NULL && (pid == NULL || strtol(pid, NULL, 10) == (long)getpid())) {
        char *end;
        unsigned long long v = strtoull(usec, &end, 10);
        if (*end == '\0' && v > 0)
            watchdog_interval = (double)v / 1e6;
    }
}

int notify_enabled(void)
{
    return notify_addrlen > 0;
}

double notify_watchdog_interval(void)
{
    return watchdog_interval;
}

int notify_send(const char *msg)
{
    if (notify_addrlen == 0)
        return -ENOTCONN;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    ssize_t n =
        sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&notify_addr, notify_addrlen);
    int rc = n < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int notify_sendf(const char *fmt, ...)
{
    if (notify_addrlen == 0)
        return -ENOTCONN;
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    int rc = notify_send(msg);
    free(msg);
    return rc;
}
