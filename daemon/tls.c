/*
 * tls.c - operator messages for TLS failures.
 *
 * libcurl reports every certificate problem of the server as
 * CURLE_PEER_FAILED_VERIFICATION and most handshake problems as
 * CURLE_SSL_CONNECT_ERROR; what went wrong is only in the error buffer
 * (OpenSSL's verify and alert texts, e.g. "SSL certificate problem:
 * certificate has expired"). With TLS 1.3 a server that refuses our client
 * certificate says so after the handshake, so that alert arrives as
 * CURLE_RECV_ERROR. tls_classify() therefore matches the texts first and
 * uses the code only for the kinds libcurl reports unambiguously. The
 * texts matched are those of OpenSSL 1.1 and 3.x (both spellings of
 * "self signed").
 */
#include "tls.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

struct pattern {
    const char *text; /* matched case-insensitively anywhere in the error */
    enum tls_failure kind;
};

/* Order matters: the more specific text first. */
static const struct pattern patterns[] = {
    {"certificate has expired", TLS_FAIL_EXPIRED},
    {"certificate is not yet valid", TLS_FAIL_NOT_YET_VALID},
    {"no alternative certificate subject name", TLS_FAIL_NAME_MISMATCH},
    {"does not match target host name", TLS_FAIL_NAME_MISMATCH},
    {"hostname mismatch", TLS_FAIL_NAME_MISMATCH},
    {"unable to get local issuer certificate", TLS_FAIL_UNKNOWN_CA},
    {"self signed certificate", TLS_FAIL_UNKNOWN_CA},
    {"self-signed certificate", TLS_FAIL_UNKNOWN_CA},
    {"unable to get issuer certificate", TLS_FAIL_UNKNOWN_CA},
    {"unable to verify the first certificate", TLS_FAIL_UNKNOWN_CA},
    {"certificate required", TLS_FAIL_CERT_REQUIRED},
    {"alert handshake failure", TLS_FAIL_CERT_REQUIRED},
    {"alert unknown ca", TLS_FAIL_CERT_REFUSED},
    {"alert bad certificate", TLS_FAIL_CERT_REFUSED},
    {"alert certificate unknown", TLS_FAIL_CERT_REFUSED},
    {"alert certificate expired", TLS_FAIL_CERT_REFUSED},
    {"alert certificate revoked", TLS_FAIL_CERT_REFUSED},
    {"alert access denied", TLS_FAIL_CERT_REFUSED},
    {"wrong version number", TLS_FAIL_NOT_TLS},
    {"packet length too long", TLS_FAIL_NOT_TLS},
    {"error setting certificate file", TLS_FAIL_CA_FILE},
    {"error setting certificate verify locations", TLS_FAIL_CA_FILE},
    {"error reading ca cert file", TLS_FAIL_CA_FILE},
    {"unable to set private key file", TLS_FAIL_CLIENT_CERT},
    {"could not load pem client certificate", TLS_FAIL_CLIENT_CERT},
    {"unable to use client certificate", TLS_FAIL_CLIENT_CERT},
    {"unable to set client certificate", TLS_FAIL_CLIENT_CERT},
};

enum tls_failure tls_classify(CURLcode rc, const char *error, int https)
{
    /* With TLS 1.3 the client's handshake is over before the server checks
     * the client certificate; Python's ssl (aiohttp, i.e. Avtomatika) then
     * just closes the connection, and libcurl sees an empty reply. */
    if (https && (rc == CURLE_GOT_NOTHING ||
                  (error != NULL && strcasestr(error, "empty reply from server") != NULL)))
        return TLS_FAIL_HUNG_UP;
    for (size_t i = 0; error != NULL && i < ARRAY_LEN(patterns); i++) {
        if (strcasestr(error, patterns[i].text) != NULL)
            return patterns[i].kind;
    }
    switch (rc) {
    case CURLE_PEER_FAILED_VERIFICATION:
        return TLS_FAIL_UNKNOWN_CA;
    case CURLE_SSL_CACERT_BADFILE:
        return TLS_FAIL_CA_FILE;
    case CURLE_SSL_CERTPROBLEM:
        return TLS_FAIL_CLIENT_CERT;
    case CURLE_SSL_CONNECT_ERROR:
        return TLS_FAIL_OTHER;
    default:
        return TLS_FAIL_NONE;
    }
}

/* The cause and the fix of each kind. */
static const char *advice(enum tls_failure kind)
{
    switch (kind) {
    case TLS_FAIL_UNKNOWN_CA:
        return "the orchestrator's certificate is not signed by a CA this worker trusts: set "
               "TLS_CA_PATH ([tls] ca_file) to the CA certificate (PEM) that signed it, or add "
               "that CA to the system store";
    case TLS_FAIL_NAME_MISMATCH:
        return "the orchestrator's certificate does not name the host in the URL: use the "
               "name the certificate lists (its subjectAltName) in ORCHESTRATOR_URL, or reissue "
               "the certificate with this name";
    case TLS_FAIL_EXPIRED:
        return "the orchestrator's certificate has expired: renew it on the orchestrator (or "
               "correct this machine's clock if it is wrong)";
    case TLS_FAIL_NOT_YET_VALID:
        return "the orchestrator's certificate is not valid yet: check this machine's clock "
               "(timedatectl) or the certificate's notBefore date";
    case TLS_FAIL_CA_FILE:
        return "the CA file cannot be used: check that TLS_CA_PATH ([tls] ca_file) names a "
               "readable PEM file";
    case TLS_FAIL_CLIENT_CERT:
        return "the client certificate or key cannot be loaded: check TLS_CERT_PATH and "
               "TLS_KEY_PATH ([tls] cert_file, key_file): PEM files, the key matching the "
               "certificate, not encrypted";
    case TLS_FAIL_CERT_REQUIRED:
        return "the orchestrator requires a client certificate: set TLS_CERT_PATH and "
               "TLS_KEY_PATH ([tls] cert_file, key_file)";
    case TLS_FAIL_CERT_REFUSED:
        return "the orchestrator refused this worker's client certificate: it must be signed "
               "by the CA in the orchestrator's TLS_CA_PATH, be valid now, and name this "
               "worker's id as its Common Name";
    case TLS_FAIL_NOT_TLS:
        return "the orchestrator does not speak TLS on this port: use http:// or the "
               "orchestrator's TLS port";
    case TLS_FAIL_HUNG_UP:
        return "the orchestrator closed the connection without answering; over TLS 1.3 this is "
               "how it refuses a client certificate that is missing or not signed by the CA in "
               "its TLS_CA_PATH: check TLS_CERT_PATH and TLS_KEY_PATH ([tls] cert_file, "
               "key_file)";
    case TLS_FAIL_OTHER:
        return "the TLS handshake failed: check that the orchestrator has TLS_ENABLED and "
               "that both sides share a TLS version";
    case TLS_FAIL_NONE:
        break;
    }
    return NULL;
}

enum tls_failure tls_explain(CURLcode rc, const char *error, int https, char *out, size_t outlen)
{
    enum tls_failure kind = tls_classify(rc, error, https);
    const char *text = error != NULL && *error ? error : curl_easy_strerror(rc);
    const char *fix = advice(kind);
    if (fix == NULL)
        snprintf(out, outlen, "%s", text);
    else
        snprintf(out, outlen, "TLS: %s (%s)", fix, text);
    return kind;
}
