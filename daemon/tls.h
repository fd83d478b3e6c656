/*
 * tls.h - what the operator needs to know about TLS: a failed TLS exchange
 * turned into a message that names the cause and the fix. The TLS itself
 * is libcurl's (http.c applies [tls] through struct http_opts); the checks
 * of the TLS files at start-up are secfile.h's.
 */
#ifndef AVT_DAEMON_TLS_H
#define AVT_DAEMON_TLS_H

#include <stddef.h>

#include <curl/curl.h>

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

#endif /* AVT_DAEMON_TLS_H */
