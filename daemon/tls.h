/*
 * tls.h - what the operator needs to know about TLS: a failed TLS exchange
 * turned into a message that names the cause and the fix, and the checks
 * of the client key file made at start-up. The TLS itself is libcurl's
 * (http.c applies [tls] through struct http_opts).
 */
#ifndef AVT_DAEMON_TLS_H
#define AVT_DAEMON_TLS_H

#include <stddef.h>

#include <curl/curl.h>

struct cfg;
struct http_opts;

enum tls_failure {
    TLS_FAIL_NONE,          /* not a TLS failure (refused, reset, DNS, ...) */
    TLS_FAIL_UNKNOWN_CA,    /* the server's chain ends in a CA we do not trust */
    TLS_FAIL_NAME_MISMATCH, /* the certificate does not name the URL's host */
    TLS_FAIL_EXPIRED,       /* the server's certificate has expired */
    TLS_FAIL_NOT_YET_VALID, /* ... is not valid yet (or our clock is wrong) */
    TLS_FAIL_CA_FILE,       /* our CA file cannot be read or parsed */
    TLS_FAIL_CLIENT_CERT,   /* our client certificate or key cannot be loaded */
    TLS_FAIL_CERT_REQUIRED, /* the server wants a client certificate, we sent none */
    TLS_FAIL_CERT_REFUSED,  /* the server refused our client certificate */
    TLS_FAIL_NOT_TLS,       /* the port does not speak TLS */
    TLS_FAIL_HUNG_UP,       /* https: closed without an answer (TLS 1.3 client-cert refusal) */
    TLS_FAIL_OTHER,         /* another TLS handshake error */
};

/* The kind of failure behind a libcurl result code and its error text
 * (either may be absent: CURLE_OK / NULL) of an exchange over https (1) or
 * plain http (0). Pure. */
enum tls_failure tls_classify(CURLcode rc, const char *error, int https);

/*
 * Write an operator message for a failed exchange into out
 * (always NUL-terminated): for a TLS failure "TLS: <cause>: <fix> (<the
 * library's text>)", otherwise the library's text as it is. Returns the
 * kind. Pure.
 */
enum tls_failure tls_explain(CURLcode rc, const char *error, int https, char *out, size_t outlen);

/*
 * Start-up check of the client key file: it must be a regular file this
 * process can read, and nobody but its owner may access it (mode & 077 ==
 * 0), because it is the worker's identity. Returns 0, or -errno / -EPERM
 * with the reason (naming the fix) in err.
 */
int tls_check_key_file(const char *path, char *err, size_t errlen);

/* A file the TLS library will read (CA bundle, certificate): a readable
 * regular file. Returns 0 or -errno with the reason in err. */
int tls_check_readable(const char *path, char *err, size_t errlen);

/* The TLS part of the HTTP client's options from [tls] (the strings are
 * borrowed from cfg); the other fields are left as they are. */
void tls_http_opts(const struct cfg *cfg, struct http_opts *opts);

#endif /* AVT_DAEMON_TLS_H */
