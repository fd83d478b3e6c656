/*
 * sts.h - the access-token client of one orchestrator (PROTOCOL.md 1.2,
 * 2.5, 4.10; PROTOCOL-1.0b14.md 1.5): the worker asks
 * POST /_worker/auth/token for a short-lived access token before it
 * registers, uses it as its X-Worker-Token, renews it at 80 % of its
 * expires_in (with RXON 1.0b14 through /_worker/auth/token/refresh and its
 * refresh token) and after a refused credential (once per burst of
 * refusals, then with backoff; a fresh token refused again, a refused token
 * that cannot be renewed and an expired one are dropped for the static token
 * until a new one comes), and never touches running tasks, the poll in flight
 * or an open WebSocket when it does. The access token only authenticates:
 * 1.0b14 messages are always signed with the static token.
 *
 * Whether tokens are used is [orchestrator] access_tokens: auto asks only
 * with a client certificate over https (1.0b13 issues tokens only then, and
 * a CA file alone would be refused forever), on always, off never. Loop
 * thread only.
 */
#ifndef AVT_DAEMON_STS_H
#define AVT_DAEMON_STS_H

struct cfg;
struct ev_loop;
struct http;

struct sts;

struct sts_hooks {
    /* The headers a token request carries: the session's, with the static
     * token (never an access token, which may be the one that expired). */
    const char *const *(*headers)(void *arg);
    /* A new token is in force (sts_token()): rebuild the headers. */
    void (*adopted)(void *arg);
    /* The first attempt is over, whatever came of it: register now. */
    void (*first_done)(void *arg);
};

/* For the orchestrator at base URL `url` (copied). cfg is borrowed until the
 * next sts_reconfigure(); the dialect is RXON 1.0b3's until
 * sts_set_dialect(). */
struct sts *sts_create(struct ev_loop *loop, struct http *http, const char *url,
                       const struct cfg *cfg, const struct sts_hooks *hooks, void *arg);
void sts_destroy(struct sts *s); /* NULL is a no-op */

/* 1 when tokens are asked for (access_tokens, see above). */
int sts_enabled(const struct sts *s);

/* The orchestrator's dialect (its refresh route, its refusal status). */
struct rxon_dialect;
void sts_set_dialect(struct sts *s, const struct rxon_dialect *d);

/* Ask for the first token (first_done follows); a no-op when not enabled
 * or when it was asked already. Returns 1 when a request is under way. */
int sts_begin(struct sts *s);

/* The access token in force, or NULL. */
const char *sts_token(const struct sts *s);

/* The orchestrator refused our credential: renew the token, once per burst
 * of refusals, then with backoff. Returns 1 when tokens are in use (the
 * refusal is then expected to heal), 0 otherwise. */
int sts_after_refusal(struct sts *s);

/* The orchestrator accepted our credential again: a later refusal may
 * renew at once. */
void sts_credential_ok(struct sts *s);

/* A reloaded configuration (backoff caps). */
void sts_reconfigure(struct sts *s, const struct cfg *cfg);

/* Tokens obtained so far (metrics). */
unsigned long sts_tokens_obtained(const struct sts *s);

#endif /* AVT_DAEMON_STS_H */
