/*
 * http_fetch.c - fetch one URL per task with libcurl, for scraping jobs,
 * with the limits a security review asks for: connect and total timeouts,
 * a maximum body size, a redirect limit, an allowlist of host names, and a
 * refusal of loopback, private, link-local and other non-public addresses
 * that is applied to the address every connection is about to use (after
 * DNS resolution, for the first request and for every redirect), so that a
 * job cannot make the worker reach its own network (server-side request
 * forgery) by naming an internal host, an address literal or a public name
 * that resolves to an internal address.
 *
 * Task type "http_fetch", params:
 *   url      required: an http:// or https:// URL (INVALID_INPUT_ERROR else)
 *   method   "GET" (default) or "HEAD"
 *   headers  array of response header names to return (default
 *            ["content-type"]); names are returned in lower case, repeated
 *            headers joined with ", "
 *   as       "text" (default: the body as a UTF-8 string), "base64", or
 *            "file" (written into output_dir, the path is returned)
 *
 * Success data: {"status": 200, "url": final URL, "redirects": n,
 * "headers": {...}, "size": body bytes, and "body" | "body_base64" |
 * "path"}. Failures: network errors, timeouts and 5xx (also 408 and 429)
 * are TRANSIENT_ERROR, other 4xx PERMANENT_ERROR (both changeable per status
 * with success_status / transient_status / permanent_status), a body over
 * max_body_bytes or more than max_redirects redirects PERMANENT_ERROR, a
 * refused host or address SECURITY_ERROR.
 *
 * Redirects are followed here, not by libcurl, so that each one's URL is
 * checked (scheme, allowlist) before it is requested; the body of a
 * redirect is not read. The address check is libcurl's socket-opening
 * callback: it sees every address libcurl is about to connect to, after
 * resolution, so DNS answers cannot get round it (no re-resolution happens
 * between check and connect). Proxies from the environment are ignored
 * (a proxy would be the only address checked).
 *
 * Threads: handle() runs on worker threads, one curl easy handle per task;
 * the configuration is written by configure() before any task and only
 * read afterwards. Cancellation and the task's deadline are honoured
 * through libcurl's progress callback (called at least about once a
 * second, also while resolving and connecting).
 *
 * Settings are the keys of [plugin.http_fetch]; see configure() and
 * man/avtworkerd-http_fetch.7.
 */
/* mkostemps() and SOCK_CLOEXEC are GNU/Linux, not C17. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <avt_plugin.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#define MAX_URL 8192        /* longest params.url accepted */
#define MAX_HOSTS 64        /* allow_hosts patterns */
#define MAX_NETS 64         /* allow_networks entries */
#define MAX_HEADER_NAMES 64 /* params.headers entries */
#define MAX_HEADER_NAME 128 /* bytes of one header name */
#define MAX_STATUS 600      /* HTTP status codes are 100..599 */
#define MAX_BODY_LIMIT (1LL << 30)

enum status_class { ST_SUCCESS = 1, ST_TRANSIENT, ST_PERMANENT };
enum body_mode { AS_TEXT, AS_BASE64, AS_FILE };

struct net {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int prefix;
};

struct fetch_conf {
    const struct avt_host *host;
    char *user_agent;
    long connect_timeout_ms;
    long timeout_ms;
    long long max_body;
    long max_redirects;
    char *hosts[MAX_HOSTS]; /* lower case; "*.suffix" or an exact name */
    size_t nhosts;
    struct net nets[MAX_NETS];
    size_t nnets;
    int allow_private;
    char *output_dir;
    unsigned char status_class[MAX_STATUS];
    unsigned char status_key[MAX_STATUS]; /* which key set it: 0 = default */
};

/* One task's transfer. */
struct fetch {
    struct avt_task *task;
    const struct fetch_conf *conf;
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    enum body_mode mode;
    /* The body of the current request: in memory, or in the .part file. */
    char *buf;
    size_t len, cap;
    int fd;
    char *part_path;
    long long total;
    int write_errno;
    /* What stopped a transfer, noted by the callbacks. */
    int oversize, cancelled, redirect_hop, hop_checked;
    int refused;
    char refused_addr[INET6_ADDRSTRLEN];
    double last_percent;
};

/* ---- Address policy ----------------------------------------------------- */

/* IPv4 ranges refused unless allowed: host byte order. */
static const struct {
    uint32_t net, mask;
} v4_refused[] = {
    {0x00000000, 0xff000000}, /* 0.0.0.0/8 "this network" (0.0.0.0 is local) */
    {0x0a000000, 0xff000000}, /* 10.0.0.0/8 private */
    {0x64400000, 0xffc00000}, /* 100.64.0.0/10 shared address space (CGNAT, VPCs) */
    {0x7f000000, 0xff000000}, /* 127.0.0.0/8 loopback */
    {0xa9fe0000, 0xffff0000}, /* 169.254.0.0/16 link-local, cloud metadata */
    {0xac100000, 0xfff00000}, /* 172.16.0.0/12 private */
    {0xc0000000, 0xffffff00}, /* 192.0.0.0/24 IETF protocol assignments */
    {0xc0a80000, 0xffff0000}, /* 192.168.0.0/16 private */
    {0xc6120000, 0xfffe0000}, /* 198.18.0.0/15 benchmarking */
    {0xe0000000, 0xe0000000}, /* 224.0.0.0/3 multicast, reserved, broadcast */
};

static int v4_is_internal(uint32_t a)
{
    for (size_t i = 0; i < sizeof(v4_refused) / sizeof(v4_refused[0]); i++) {
        if ((a & v4_refused[i].mask) == v4_refused[i].net)
            return 1;
    }
    return 0;
}

static uint32_t v4_at(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IPv6: loopback, unspecified, IPv4-compatible, ULA, link- and site-local,
 * multicast, Teredo and local-use NAT64 are internal; IPv4-mapped, NAT64
 * and 6to4 addresses are judged by the IPv4 address they carry. */
static int v6_is_internal(const unsigned char *a)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char zero[12] = {0};

    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
        return v4_is_internal(v4_at(a + 12));
    if (memcmp(a, zero, 12) == 0) /* ::, ::1 and IPv4-compatible */
        return 1;
    if (a[0] == 0x20 && a[1] == 0x02) /* 2002::/16 6to4 */
        return v4_is_internal(v4_at(a + 2));
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) /* 2001::/32 Teredo */
        return 1;
    /* 64:ff9b:1::/48 local-use NAT64 */
    if (a[0] == 0 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4] == 0 && a[5] == 1)
        return 1;
    return (a[0] & 0xfe) == 0xfc ||                   /* fc00::/7 unique local */
           (a[0] == 0xfe && (a[1] & 0x80) == 0x80) || /* fe80::/10, fec0::/10 */
           a[0] == 0xff;                              /* ff00::/8 multicast */
}

static int net_contains(const struct net *n, int family, const unsigned char *addr)
{
    int bits = n->prefix;

    if (n->family != family)
        return 0;
    for (int i = 0; bits > 0; i++, bits -= 8) {
        unsigned char mask = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));
        if ((addr[i] & mask) != (n->addr[i] & mask))
            return 0;
    }
    return 1;
}

/* 1 when a connection to `sa` is refused: an internal address, unless
 * allow_private is set or an allow_networks entry holds it. */
static int addr_refused(const struct fetch_conf *c, const struct sockaddr *sa)
{
    const unsigned char *addr;
    int family = sa->sa_family, internal;

    if (family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        addr = (const unsigned char *)&in->sin_addr;
        internal = v4_is_internal(v4_at(addr));
    } else if (family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        addr = in6->sin6_addr.s6_addr;
        internal = v6_is_internal(addr);
    } else {
        return 1; /* Only IP: never a Unix socket or anything else. */
    }
    for (size_t i = 0; i < c->nnets; i++) {
        if (net_contains(&c->nets[i], family, addr))
            return 0;
    }
    return internal && !c->allow_private;
}

/* libcurl's socket opener: the one place every connection passes, with
 * the address it is about to connect to. A refused address gets no socket;
 * libcurl then tries the host's next address, if any. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct fetch *f = clientp;
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, &a->addr, a->addrlen < sizeof(ss) ? a->addrlen : sizeof(ss));
    if (purpose != CURLSOCKTYPE_IPCXN || addr_refused(f->conf, (struct sockaddr *)&ss)) {
        const void *bin = ss.ss_family == AF_INET6
                              ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                              : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
        f->refused = 1;
        if (inet_ntop(ss.ss_family, bin, f->refused_addr, sizeof(f->refused_addr)) == NULL)
            snprintf(f->refused_addr, sizeof(f->refused_addr), "(family %d)", ss.ss_family);
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- Host allowlist ----------------------------------------------------- */

/* `host` lower-cased into out, without IPv6 brackets and a trailing dot. */
static void host_normalize(const char *host, char *out, size_t outlen)
{
    size_t n = 0;

    if (*host == '[')
        host++;
    for (; *host != '\0' && *host != ']' && n + 1 < outlen; host++)
        out[n++] = (char)tolower((unsigned char)*host);
    if (n > 0 && out[n - 1] == '.')
        n--;
    out[n] = '\0';
}

/* "*.example.com" matches any name below example.com (not example.com
 * itself); any other pattern matches exactly. Both are normalized. */
static int host_matches(const char *pattern, const char *host)
{
    size_t hl = strlen(host), sl;

    if (strncmp(pattern, "*.", 2) != 0)
        return strcmp(pattern, host) == 0;
    sl = strlen(pattern + 1); /* ".example.com" */
    return hl > sl && strcmp(host + hl - sl, pattern + 1) == 0;
}

/* 1 when the allowlist is empty or a pattern matches. */
static int host_allowed(const struct fetch_conf *c, const char *host)
{
    char norm[256];

    if (c->nhosts == 0)
        return 1;
    host_normalize(host, norm, sizeof(norm));
    for (size_t i = 0; i < c->nhosts; i++) {
        if (host_matches(c->hosts[i], norm))
            return 1;
    }
    return 0;
}

/* ---- Configuration ------------------------------------------------------ */

static int parse_ll(const char *s, long long min, long long max, long long *out)
{
    const char *digits = s[0] == '-' ? s + 1 : s;
    char *end;
    long long v;

    if (*digits < '0' || *digits > '9')
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

/* Seconds with an optional fraction, min..max, as milliseconds. */
static int parse_seconds(const char *s, double min, double max, long *ms)
{
    char *end;
    double v;

    if ((*s < '0' || *s > '9') && *s != '.')
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return -EINVAL;
    *ms = (long)(v * 1000.0 + 0.5);
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0;
            return 0;
        }
    }
    return -EINVAL;
}

/* Split a list on commas and blanks; calls fn for each item (NUL-ended in
 * a copy). Stops at the first error. */
static int each_item(const char *list, int (*fn)(struct fetch_conf *, const char *, char *, size_t),
                     struct fetch_conf *c, char *err, size_t errlen)
{
    char item[256];

    while (*list != '\0') {
        size_t n = strcspn(list, ", \t");
        if (n >= sizeof(item)) {
            snprintf(err, errlen, "an item is longer than %zu characters", sizeof(item) - 1);
            return -EINVAL;
        }
        if (n > 0) {
            int rc;
            memcpy(item, list, n);
            item[n] = '\0';
            if ((rc = fn(c, item, err, errlen)) != 0)
                return rc;
        }
        list += n;
        list += strspn(list, ", \t");
    }
    return 0;
}

static int add_host(struct fetch_conf *c, const char *item, char *err, size_t errlen)
{
    char norm[256];
    const char *name;

    host_normalize(item, norm, sizeof(norm));
    name = strncmp(norm, "*.", 2) == 0 ? norm + 2 : norm;
    if (name[0] == '\0' ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-.:") != strlen(name)) {
        snprintf(err, errlen, "\"%s\" is not a host name, an address or *.domain", item);
        return -EINVAL;
    }
    if (c->nhosts == MAX_HOSTS) {
        snprintf(err, errlen, "more than %d patterns", MAX_HOSTS);
        return -EINVAL;
    }
    if ((c->hosts[c->nhosts] = strdup(norm)) == NULL)
        return -ENOMEM;
    c->nhosts++;
    return 0;
}

static int add_net(struct fetch_conf *c, const char *item, char *err, size_t errlen)
{
    struct net n = {0};
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(item, '/');
    size_t alen = slash != NULL ? (size_t)(slash - item) : strlen(item);
    long long prefix;

    if (alen >= sizeof(addr) || c->nnets == MAX_NETS)
        goto bad;
    memcpy(addr, item, alen);
    addr[alen] = '\0';
    n.family = strchr(addr, ':') != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(n.family, addr, n.addr) != 1)
        goto bad;
    prefix = n.family == AF_INET ? 32 : 128;
    if (slash != NULL && parse_ll(slash + 1, 0, prefix, &prefix) != 0)
        goto bad;
    n.prefix = (int)prefix;
    c->nets[c->nnets++] = n;
    return 0;
bad:
    snprintf(err, errlen, "\"%s\" is not an ADDRESS or ADDRESS/PREFIX (at most %d entries)", item,
             MAX_NETS);
    return -EINVAL;
}

/* One item of a status list: "404" or "500-599". The class to set is
 * passed in c->status_key[0], the key being parsed. */
static int add_status(struct fetch_conf *c, const char *item, char *err, size_t errlen)
{
    char lo_s[8] = "";
    const char *dash = strchr(item, '-');
    long long lo = 0, hi = -1;
    int cls = c->status_key[0];

    if (dash == NULL) {
        if (parse_ll(item, 100, 599, &lo) == 0)
            hi = lo;
    } else if ((size_t)(dash - item) < sizeof(lo_s)) {
        memcpy(lo_s, item, (size_t)(dash - item));
        lo_s[dash - item] = '\0';
        if (parse_ll(lo_s, 100, 599, &lo) != 0 || parse_ll(dash + 1, lo, 599, &hi) != 0)
            hi = -1;
    }
    if (hi < lo) {
        snprintf(err, errlen, "\"%s\" is not a status (100..599) or a range like 500-599", item);
        return -EINVAL;
    }
    for (long long s = lo; s <= hi; s++) {
        if (c->status_key[s] != 0 && c->status_key[s] != cls) {
            snprintf(err, errlen, "status %lld is already given in another *_status key", s);
            return -EINVAL;
        }
        c->status_key[s] = (unsigned char)cls;
        c->status_class[s] = (unsigned char)cls;
    }
    return 0;
}

static int set_status_list(struct fetch_conf *c, int cls, const char *value, char *err,
                           size_t errlen)
{
    int rc;

    c->status_key[0] = (unsigned char)cls;
    rc = each_item(value, add_status, c, err, errlen);
    c->status_key[0] = 0;
    return rc;
}

static int set_string(char **slot, const char *value)
{
    char *copy = strdup(value);

    if (copy == NULL)
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

static int set_user_agent(struct fetch_conf *c, const char *value, char *err, size_t errlen)
{
    size_t n = strlen(value);

    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)value[i] < ' ' || value[i] == 0x7f)
            n = 0;
    }
    if (n == 0 || n > 256) {
        snprintf(err, errlen, "must be 1 to 256 printable characters");
        return -EINVAL;
    }
    return set_string(&c->user_agent, value);
}

static int set_output_dir(struct fetch_conf *c, const char *value, char *err, size_t errlen)
{
    if (value[0] != '/') {
        snprintf(err, errlen, "must be an absolute path");
        return -EINVAL;
    }
    return set_string(&c->output_dir, value);
}

/* Keys taking a number; NULL fn marks the end. */
static int configure_number(struct fetch_conf *c, const char *key, const char *value, char *err,
                            size_t errlen, int *done)
{
    long long v;

    *done = 1;
    if (strcmp(key, "connect_timeout") == 0 || strcmp(key, "timeout") == 0) {
        long *slot = key[0] == 'c' ? &c->connect_timeout_ms : &c->timeout_ms;
        if (parse_seconds(value, 0.1, 86400, slot) == 0)
            return 0;
        snprintf(err, errlen, "must be a number of seconds from 0.1 to 86400, not \"%s\"", value);
        return -EINVAL;
    }
    if (strcmp(key, "max_body_bytes") == 0) {
        if (parse_ll(value, 1, MAX_BODY_LIMIT, &c->max_body) == 0)
            return 0;
        snprintf(err, errlen, "must be an integer from 1 to %lld, not \"%s\"", MAX_BODY_LIMIT,
                 value);
        return -EINVAL;
    }
    if (strcmp(key, "max_redirects") == 0) {
        if (parse_ll(value, 0, 50, &v) == 0) {
            c->max_redirects = (long)v;
            return 0;
        }
        snprintf(err, errlen, "must be an integer from 0 to 50, not \"%s\"", value);
        return -EINVAL;
    }
    *done = 0;
    return 0;
}

static int fetch_configure(void *state, const char *key, const char *value, char *err,
                           size_t errlen)
{
    struct fetch_conf *c = state;
    int done, rc = configure_number(c, key, value, err, errlen, &done);

    if (done)
        return rc;
    if (strcmp(key, "user_agent") == 0)
        return set_user_agent(c, value, err, errlen);
    if (strcmp(key, "allow_hosts") == 0)
        return each_item(value, add_host, c, err, errlen);
    if (strcmp(key, "allow_networks") == 0)
        return each_item(value, add_net, c, err, errlen);
    if (strcmp(key, "allow_private") == 0) {
        if (parse_bool(value, &c->allow_private) == 0)
            return 0;
        snprintf(err, errlen, "must be true or false, not \"%s\"", value);
        return -EINVAL;
    }
    if (strcmp(key, "output_dir") == 0)
        return set_output_dir(c, value, err, errlen);
    if (strcmp(key, "success_status") == 0)
        return set_status_list(c, ST_SUCCESS, value, err, errlen);
    if (strcmp(key, "transient_status") == 0)
        return set_status_list(c, ST_TRANSIENT, value, err, errlen);
    if (strcmp(key, "permanent_status") == 0)
        return set_status_list(c, ST_PERMANENT, value, err, errlen);
    snprintf(err, errlen,
             "unknown key (known: user_agent, connect_timeout, timeout, max_body_bytes, "
             "max_redirects, allow_hosts, allow_networks, allow_private, output_dir, "
             "success_status, transient_status, permanent_status)");
    return -EINVAL;
}

static int fetch_start(void *state, char *err, size_t errlen)
{
    struct fetch_conf *c = state;
    struct stat st;
    int e = 0;

    if (c->output_dir != NULL) {
        if (stat(c->output_dir, &st) != 0)
            e = errno;
        else if (!S_ISDIR(st.st_mode))
            e = ENOTDIR;
        else if (access(c->output_dir, W_OK | X_OK) != 0)
            e = errno;
    }
    if (e != 0) {
        snprintf(err, errlen, "%s: not a directory this user can write to: %s", c->output_dir,
                 strerror(e));
        return -EINVAL;
    }
    if (c->connect_timeout_ms > c->timeout_ms)
        c->connect_timeout_ms = c->timeout_ms;
    c->host->log(c->host, NULL, AVT_LOG_INFO,
                 "timeout=%.1fs max_body_bytes=%lld max_redirects=%ld allow_hosts=%zu "
                 "allow_networks=%zu allow_private=%s output_dir=%s",
                 (double)c->timeout_ms / 1000.0, c->max_body, c->max_redirects, c->nhosts, c->nnets,
                 c->allow_private ? "true" : "false",
                 c->output_dir != NULL ? c->output_dir : "(none)");
    if (c->allow_private)
        c->host->log(c->host, NULL, AVT_LOG_WARNING,
                     "allow_private = true: jobs can make this worker fetch from loopback and "
                     "private networks (meant for tests; prefer allow_networks)");
    return 0;
}

static int fetch_init(const struct avt_host *host, void **state)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    struct fetch_conf *c;

    /* curl_easy_header() and CURLOPT_PROTOCOLS_STR. */
    if (v->version_num < 0x075500) {
        host->log(host, NULL, AVT_LOG_ERR, "libcurl %s is too old: 7.85.0 or later is needed",
                  v->version);
        return -ENOTSUP;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return -ENOMEM;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(c);
        return -ENOMEM;
    }
    c->host = host;
    c->connect_timeout_ms = 10000;
    c->timeout_ms = 60000;
    c->max_body = 10LL << 20;
    c->max_redirects = 5;
    for (int s = 100; s < MAX_STATUS; s++)
        c->status_class[s] = s < 400 ? ST_SUCCESS : s < 500 ? ST_PERMANENT : ST_TRANSIENT;
    c->status_class[408] = c->status_class[429] = ST_TRANSIENT;
    *state = c;
    return 0;
}

static void fetch_shutdown(void *state)
{
    struct fetch_conf *c = state;

    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nhosts; i++)
        free(c->hosts[i]);
    free(c->user_agent);
    free(c->output_dir);
    free(c);
    curl_global_cleanup();
}

/* ---- Params ------------------------------------------------------------- */

struct fetch_params {
    const char *url;
    int head;
    enum body_mode mode;
    json_t *headers; /* borrowed array of strings, or NULL for the default */
};

static int header_name_ok(json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    return s != NULL && n > 0 && n <= MAX_HEADER_NAME &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                     "!#$%&'*+-.^_`|~") == n;
}

/* Fails the task with INVALID_INPUT_ERROR naming the param; -EINVAL then. */
static int params_read(struct avt_task *task, struct fetch_params *p)
{
    json_t *url = json_object_get(task->params, "url");
    json_t *method = json_object_get(task->params, "method");
    json_t *as = json_object_get(task->params, "as");
    const char *s;

    if (!json_is_string(url) || json_string_length(url) == 0 || json_string_length(url) > MAX_URL ||
        strlen(json_string_value(url)) != json_string_length(url)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.url must be a string of 1 to %d bytes",
                 MAX_URL);
        return -EINVAL;
    }
    p->url = json_string_value(url);
    s = method != NULL ? json_string_value(method) : "GET";
    if (s == NULL || (strcmp(s, "GET") != 0 && strcmp(s, "HEAD") != 0)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params.method must be \"GET\" or \"HEAD\"");
        return -EINVAL;
    }
    p->head = s[0] == 'H';
    s = as != NULL ? json_string_value(as) : "text";
    if (s == NULL || (strcmp(s, "text") != 0 && strcmp(s, "base64") != 0 && strcmp(s, "file"))) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "params.as must be \"text\", \"base64\" or \"file\"");
        return -EINVAL;
    }
    p->mode = s[0] == 't' ? AS_TEXT : s[0] == 'b' ? AS_BASE64 : AS_FILE;
    p->headers = json_object_get(task->params, "headers");
    if (p->headers != NULL &&
        (!json_is_array(p->headers) || json_array_size(p->headers) > MAX_HEADER_NAMES)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "params.headers must be an array of at most %d header names", MAX_HEADER_NAMES);
        return -EINVAL;
    }
    for (size_t i = 0; p->headers != NULL && i < json_array_size(p->headers); i++) {
        if (!header_name_ok(json_array_get(p->headers, i))) {
            avt_fail(task, AVT_INVALID_INPUT_ERROR,
                     "params.headers[%zu] must be a header name (1 to %d token characters)", i,
                     MAX_HEADER_NAME);
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- URLs --------------------------------------------------------------- */

/* The parts of `url` the checks need: scheme and host, malloc'ed. Also the
 * URL without user and password, for the result (shown), and without
 * query and fragment too, for log lines and messages (safe): they may hold
 * credentials. Returns 0 or -EINVAL. */
struct url_parts {
    char *scheme, *host, *safe, *shown;
};

static void url_parts_free(struct url_parts *u)
{
    curl_free(u->scheme);
    curl_free(u->host);
    curl_free(u->safe);
    curl_free(u->shown);
    memset(u, 0, sizeof(*u));
}

static int url_parse(const char *url, struct url_parts *out)
{
    CURLU *u = curl_url();
    int rc = -EINVAL;

    memset(out, 0, sizeof(*out));
    if (u == NULL)
        return -ENOMEM;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &out->scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &out->host, 0) != CURLUE_OK)
        goto out;
    curl_url_set(u, CURLUPART_USER, NULL, 0);
    curl_url_set(u, CURLUPART_PASSWORD, NULL, 0);
    if (curl_url_get(u, CURLUPART_URL, &out->shown, 0) != CURLUE_OK)
        goto out;
    curl_url_set(u, CURLUPART_QUERY, NULL, 0);
    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0);
    if (curl_url_get(u, CURLUPART_URL, &out->safe, 0) != CURLUE_OK)
        goto out;
    rc = strcmp(out->scheme, "http") == 0 || strcmp(out->scheme, "https") == 0 ? 0 : -EINVAL;
out:
    curl_url_cleanup(u);
    if (rc != 0)
        url_parts_free(out);
    return rc;
}

/* The URL a redirect answer points to: its Location header resolved
 * against `base`, malloc'ed; NULL when it has none or it does not parse. */
static char *redirect_target(CURL *easy, const char *base)
{
    struct curl_header *h;
    CURLU *u;
    char *url = NULL, *out = NULL;

    if (curl_easy_header(easy, "Location", 0, CURLH_HEADER, -1, &h) != CURLHE_OK ||
        (u = curl_url()) == NULL)
        return NULL;
    if (curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_URL, h->value, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_URL, &url, 0) == CURLUE_OK)
        out = strdup(url);
    curl_free(url);
    curl_url_cleanup(u);
    return out;
}

/* ---- Transfer callbacks ------------------------------------------------- */

static int is_redirect(long code)
{
    return code == 301 || code == 302 || code == 303 || code == 307 || code == 308;
}

static int body_append(struct fetch *f, const char *data, size_t n)
{
    if (f->mode == AS_FILE) {
        while (n > 0) {
            ssize_t w = write(f->fd, data, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                f->write_errno = errno;
                return -1;
            }
            data += w;
            n -= (size_t)w;
        }
        return 0;
    }
    if (f->len + n > f->cap) {
        size_t cap = f->cap ? f->cap : 16384;
        char *p;
        while (cap < f->len + n)
            cap *= 2;
        if ((p = realloc(f->buf, cap)) == NULL) {
            f->write_errno = ENOMEM;
            return -1;
        }
        f->buf = p;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct fetch *f = userp;
    size_t n = size * nmemb;

    if (!f->hop_checked) {
        long code = 0;
        struct curl_header *location;
        curl_off_t announced = -1;
        f->hop_checked = 1;
        /* CURLINFO_REDIRECT_URL is only set once the transfer is over. */
        curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_getinfo(f->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
        f->redirect_hop =
            is_redirect(code) &&
            curl_easy_header(f->easy, "Location", 0, CURLH_HEADER, -1, &location) == CURLHE_OK;
        /* A body announced too large is refused before it is read. */
        if (!f->redirect_hop && announced > f->conf->max_body)
            f->oversize = 1;
    }
    if (f->redirect_hop)
        return 0; /* a redirect's body is not wanted: stop reading it */
    if (f->oversize || (long long)n > f->conf->max_body - f->total) {
        f->oversize = 1;
        return 0;
    }
    f->total += (long long)n;
    return body_append(f, data, n) == 0 ? n : 0;
}

static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct fetch *f = userp;
    double percent;

    (void)ultotal;
    (void)ulnow;
    if (avt_is_cancelled(f->task)) {
        f->cancelled = 1;
        return 1;
    }
    if (dltotal > 0 && !f->redirect_hop) {
        /* Whole percents (the cast truncates), without libm's floor(). */
        percent = (double)(long long)(100.0 * (double)dlnow / (double)dltotal);
        if (percent > f->last_percent && percent < 100) {
            f->last_percent = percent;
            avt_progress(f->task, percent, "%lld of %lld bytes", (long long)dlnow,
                         (long long)dltotal);
        }
    }
    return 0;
}

/* ---- Output ------------------------------------------------------------- */

static char *base64(const unsigned char *in, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *p = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *p++ = tab[v >> 18 & 63];
        *p++ = tab[v >> 12 & 63];
        *p++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *p++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *p = '\0';
    return out;
}

/* Opens output_dir/JOB-XXXXXX.part for as=file. The job id is reduced to
 * [A-Za-z0-9_.-] (at most 64 characters) so that it cannot leave the
 * directory. Fails the task and returns -1 on error. */
static int part_open(struct fetch *f)
{
    const char *dir = f->conf->output_dir;
    char job[65];
    size_t n = 0, len;

    for (const char *s = f->task->job_id; *s != '\0' && n < 64; s++)
        job[n++] = isalnum((unsigned char)*s) || *s == '-' || *s == '_' ? *s : '_';
    job[n] = '\0';
    len = strlen(dir) + n + 32;
    if ((f->part_path = malloc(len)) == NULL) {
        avt_fail(f->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return -1;
    }
    snprintf(f->part_path, len, "%s/%s-XXXXXX.part", dir, n > 0 ? job : "job");
    if ((f->fd = mkostemps(f->part_path, 5, O_CLOEXEC)) < 0) {
        avt_log_err(f->task, "output_dir %s: cannot create a file: %s", dir, strerror(errno));
        avt_fail(f->task, AVT_TRANSIENT_ERROR, "cannot create a file in output_dir: %s",
                 strerror(errno));
        free(f->part_path);
        f->part_path = NULL;
        return -1;
    }
    fchmod(f->fd, 0640);
    return 0;
}

/* Forget the body and the notes of the previous request (a redirect's). */
static void body_reset(struct fetch *f)
{
    f->len = 0;
    f->total = 0;
    f->hop_checked = f->redirect_hop = f->oversize = f->refused = 0;
    if (f->fd >= 0 && (ftruncate(f->fd, 0) != 0 || lseek(f->fd, 0, SEEK_SET) != 0))
        f->write_errno = errno;
}

/* Adds the body to `data` as the params asked; fails the task and returns
 * -1 when it cannot. */
static int body_put(struct fetch *f, json_t *data)
{
    char *final, *b64;
    json_t *v;

    if (f->mode == AS_TEXT) {
        if ((v = json_stringn(f->buf != NULL ? f->buf : "", f->len)) == NULL) {
            avt_fail(f->task, AVT_PERMANENT_ERROR,
                     "the body is not valid UTF-8 text (ask for as = \"base64\" or \"file\")");
            return -1;
        }
        return json_object_set_new(data, "body", v);
    }
    if (f->mode == AS_BASE64) {
        if ((b64 = base64((const unsigned char *)f->buf, f->len)) == NULL)
            goto oom;
        v = json_string(b64);
        free(b64);
        return json_object_set_new(data, "body_base64", v);
    }
    if ((final = strdup(f->part_path)) == NULL)
        goto oom;
    final[strlen(final) - 5] = '\0'; /* without ".part" */
    if (close(f->fd) != 0 || rename(f->part_path, final) != 0) {
        f->fd = -1;
        avt_fail(f->task, AVT_TRANSIENT_ERROR, "cannot write the body to output_dir: %s",
                 strerror(errno));
        free(final);
        return -1;
    }
    f->fd = -1;
    free(f->part_path);
    f->part_path = NULL;
    v = json_string(final);
    free(final);
    return json_object_set_new(data, "path", v);
oom:
    avt_fail(f->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
    return -1;
}

/* The selected headers of the final response: lower-cased names, repeated
 * headers joined with ", ". */
static json_t *headers_get(struct fetch *f, json_t *names)
{
    json_t *out = json_object();

    for (size_t i = 0; out != NULL && i < json_array_size(names); i++) {
        const char *name = json_string_value(json_array_get(names, i));
        struct curl_header *h;
        char key[MAX_HEADER_NAME + 1];
        size_t k = 0, amount;
        char *joined = NULL;
        size_t jlen = 0;

        if (curl_easy_header(f->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
            continue;
        amount = h->amount;
        for (size_t j = 0; j < amount; j++) {
            char *p;
            size_t vl;
            if (j > 0 && curl_easy_header(f->easy, name, j, CURLH_HEADER, -1, &h) != CURLHE_OK)
                break;
            vl = strlen(h->value);
            if ((p = realloc(joined, jlen + vl + 3)) == NULL)
                break;
            joined = p;
            jlen += (size_t)snprintf(joined + jlen, vl + 3, "%s%s", j > 0 ? ", " : "", h->value);
        }
        for (; name[k] != '\0'; k++)
            key[k] = (char)tolower((unsigned char)name[k]);
        key[k] = '\0';
        json_object_set_new(out, key, json_string(joined != NULL ? joined : ""));
        free(joined);
    }
    return out;
}

/* ---- The fetch ---------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The monotonic time by which the fetch must end: timeout from now, or the
 * task's deadline (ABI 1.1) when that comes first. */
static double fetch_deadline(const struct fetch *f)
{
    const struct avt_task *t = f->task;
    double end = now_ms() + (double)f->conf->timeout_ms;
    struct timespec real;

    if (t->struct_size >= offsetof(struct avt_task, deadline) + sizeof(t->deadline) &&
        t->deadline > 0) {
        clock_gettime(CLOCK_REALTIME, &real);
        double left = (t->deadline - ((double)real.tv_sec + (double)real.tv_nsec / 1e9)) * 1e3;
        if (now_ms() + left < end)
            end = now_ms() + left;
    }
    return end;
}

static int easy_setup(struct fetch *f, int head)
{
    CURL *e = f->easy;
    int bad = 0;

    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, f) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_XFERINFODATA, f) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOBODY, head ? 1L : 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_USERAGENT,
                            f->conf->user_agent != NULL ? f->conf->user_agent
                                                        : "avtworkerd-http_fetch/1.0") != CURLE_OK;
    return bad ? -1 : 0;
}

/* Checks one request's URL before it is made: scheme, host allowlist.
 * `first`: the task's own URL (INVALID_INPUT_ERROR when unusable) rather
 * than a redirect (PERMANENT_ERROR). Fails the task and returns -1. */
static int url_check(struct fetch *f, const char *url, int first, struct url_parts *u)
{
    if (url_parse(url, u) != 0) {
        avt_fail(f->task, first ? AVT_INVALID_INPUT_ERROR : AVT_PERMANENT_ERROR,
                 "%s is not an http:// or https:// URL", first ? "params.url" : "a redirect");
        return -1;
    }
    if (!host_allowed(f->conf, u->host)) {
        avt_log_warn(f->task, "refused %s: host %s is not in allow_hosts", u->safe, u->host);
        avt_fail(f->task, AVT_SECURITY_ERROR, "host %s is not allowed (allow_hosts)", u->host);
        return -1;
    }
    return 0;
}

/* The outcome of a request that did not give an HTTP answer. */
static void fail_transfer(struct fetch *f, CURLcode rc, const struct url_parts *u, double t0)
{
    struct avt_task *t = f->task;

    if (f->cancelled) {
        avt_fail(t, AVT_TRANSIENT_ERROR, "cancelled");
    } else if (f->refused && rc == CURLE_COULDNT_CONNECT) {
        avt_log_warn(t,
                     "refused %s: address %s of host %s is internal (loopback, private, "
                     "link-local ...; allow_networks or allow_private allow it)",
                     u->safe, f->refused_addr, u->host);
        avt_fail(t, AVT_SECURITY_ERROR, "address %s of host %s is not allowed", f->refused_addr,
                 u->host);
    } else if (f->oversize) {
        avt_fail(t, AVT_PERMANENT_ERROR, "the body is larger than max_body_bytes (%lld)",
                 f->conf->max_body);
    } else if (f->write_errno != 0) {
        avt_fail(t, AVT_TRANSIENT_ERROR, "cannot store the body: %s", strerror(f->write_errno));
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        avt_fail(t, AVT_TRANSIENT_ERROR, "%s: timed out after %.1f s", u->safe,
                 (now_ms() - t0) / 1e3);
    } else if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT) {
        avt_fail(t, AVT_PERMANENT_ERROR, "%s: %s", u->safe, curl_easy_strerror(rc));
    } else {
        avt_fail(t, AVT_TRANSIENT_ERROR, "%s: %s", u->safe,
                 f->errbuf[0] != '\0' ? f->errbuf : curl_easy_strerror(rc));
    }
    avt_log_info(t, "%s: no answer: %s", u->safe, curl_easy_strerror(rc));
}

/* The task's outcome from the final answer. */
static void finish(struct fetch *f, const struct fetch_params *p, long code, const char *url,
                   long redirects)
{
    int cls = code >= 100 && code < MAX_STATUS ? f->conf->status_class[code] : ST_TRANSIENT;
    json_t *data;
    int bad;

    avt_log_debug(f->task, "HTTP %ld, %lld bytes, %ld redirects", code, f->total, redirects);
    if (cls != ST_SUCCESS) {
        avt_fail(f->task, cls == ST_TRANSIENT ? AVT_TRANSIENT_ERROR : AVT_PERMANENT_ERROR,
                 "HTTP status %ld", code);
        return;
    }
    data = json_object();
    bad = data == NULL || json_object_set_new(data, "status", json_integer(code)) |
                              json_object_set_new(data, "url", json_string(url)) |
                              json_object_set_new(data, "redirects", json_integer(redirects)) |
                              json_object_set_new(data, "size", json_integer(f->total));
    if (!bad) {
        json_t *names = p->headers;
        json_t *dflt = names == NULL ? json_pack("[s]", "content-type") : NULL;
        bad = json_object_set_new(data, "headers", headers_get(f, names ? names : dflt));
        json_decref(dflt);
    }
    if (!bad && body_put(f, data) != 0) {
        json_decref(data);
        return;
    }
    if (bad) {
        json_decref(data);
        avt_fail(f->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
        return;
    }
    avt_succeed(f->task, data);
}

/* One request per hop until an answer that is not a redirect. */
static void fetch_run(struct fetch *f, const struct fetch_params *p)
{
    double t0 = now_ms(), end = fetch_deadline(f);
    char *url = strdup(p->url);
    struct url_parts u = {0};

    for (long hops = 0; url != NULL; hops++) {
        long code = 0, left = (long)(end - now_ms());
        char *location;
        CURLcode rc;

        url_parts_free(&u);
        if (url_check(f, url, hops == 0, &u) != 0)
            break;
        if (left <= 0) {
            avt_fail(f->task, AVT_TRANSIENT_ERROR, "%s: timed out after %.1f s", u.safe,
                     (now_ms() - t0) / 1e3);
            break;
        }
        body_reset(f);
        f->errbuf[0] = '\0';
        curl_easy_setopt(f->easy, CURLOPT_URL, url);
        curl_easy_setopt(f->easy, CURLOPT_TIMEOUT_MS, left);
        curl_easy_setopt(f->easy, CURLOPT_CONNECTTIMEOUT_MS,
                         left < f->conf->connect_timeout_ms ? left : f->conf->connect_timeout_ms);
        rc = curl_easy_perform(f->easy);
        curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &code);
        if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && f->redirect_hop && !f->cancelled)) {
            fail_transfer(f, rc, &u, t0);
            break;
        }
        if (!is_redirect(code) || (location = redirect_target(f->easy, url)) == NULL) {
            finish(f, p, code, u.shown, hops);
            break;
        }
        if (hops >= f->conf->max_redirects) {
            avt_fail(f->task, AVT_PERMANENT_ERROR, "more than %ld redirects (max_redirects)",
                     f->conf->max_redirects);
            free(location);
            break;
        }
        free(url);
        url = location;
    }
    if (url == NULL)
        avt_fail(f->task, AVT_RESOURCE_EXHAUSTED_ERROR, "out of memory");
    free(url);
    url_parts_free(&u);
}

static int fetch_handle(void *state, struct avt_task *task)
{
    struct fetch f = {.task = task, .conf = state, .fd = -1, .last_percent = -1};
    struct fetch_params p;

    if (!json_is_object(task->params)) {
        avt_fail(task, AVT_INVALID_INPUT_ERROR, "params must be a JSON object");
        return 0;
    }
    if (params_read(task, &p) != 0)
        return 0;
    if (p.mode == AS_FILE && f.conf->output_dir == NULL) {
        avt_log_warn(task, "as = \"file\" needs output_dir in [plugin.http_fetch]");
        avt_fail(task, AVT_INVALID_INPUT_ERROR,
                 "as = \"file\" is not available on this worker (no output_dir)");
        return 0;
    }
    f.mode = p.mode;
    if ((f.easy = curl_easy_init()) == NULL || easy_setup(&f, p.head) != 0) {
        avt_fail(task, AVT_RESOURCE_EXHAUSTED_ERROR, "cannot set up libcurl");
    } else if (f.mode != AS_FILE || part_open(&f) == 0) {
        fetch_run(&f, &p);
    }
    curl_easy_cleanup(f.easy);
    if (f.fd >= 0)
        close(f.fd);
    if (f.part_path != NULL)
        unlink(f.part_path);
    free(f.part_path);
    free(f.buf);
    return 0;
}

static const char *const fetch_types[] = {"http_fetch", NULL};

AVT_PLUGIN(.name = "http_fetch", .version = "1.0.0", .task_types = fetch_types, .init = fetch_init,
           .configure = fetch_configure, .start = fetch_start, .handle = fetch_handle,
           .shutdown = fetch_shutdown);
