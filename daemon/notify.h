/*
 * notify.h - the sd_notify(3) protocol without libsystemd: datagrams to the
 * unix socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract
 * namespace). Without NOTIFY_SOCKET every call is a cheap no-op, so the
 * daemon runs the same under systemd, in a terminal and in tests (which
 * bind a socket of their own).
 */
#ifndef AVT_DAEMON_NOTIFY_H
#define AVT_DAEMON_NOTIFY_H

/* Read $NOTIFY_SOCKET and $WATCHDOG_USEC once. */
void notify_init(void);

/* Send one message ("READY=1", "STATUS=...", several lines allowed).
 * Returns 0, -ENOTCONN without NOTIFY_SOCKET, or -errno. */
int notify_send(const char *msg);
int notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd asked for, in seconds; 0 when none. */
double notify_watchdog_interval(void);

/* 1 when NOTIFY_SOCKET is set. */
int notify_enabled(void);

#endif /* AVT_DAEMON_NOTIFY_H */
