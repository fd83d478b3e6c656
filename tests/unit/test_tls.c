/*
 * test_tls.c - tls.c (classifying libcurl's TLS errors into operator
 * messages, the key and CA file checks) and the configuration it relies
 * on: [tls], [orchestrator.NAME], ORCHESTRATORS_CONFIG and multi_mode in
 * cfg_load().
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cfg.h"
#include "tap.h"
#include "secfile.h"
#include "tls.h"
#include "util.h"

static char tmpdir[64];

static const char *path_in_tmp(const char *name)
{
    static char buf[4][sizeof(tmpdir) + 1 + 256];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, name);
    return buf[i];
}

static const char *write_file(const char *name, const char *text, mode_t mode)
{
    const char *p = path_in_tmp(name);
    FILE *fp = fopen(p, "w");
    if (fp == NULL)
        abort();
    fputs(text, fp);
    fclose(fp);
    chmod(p, mode);
    return p;
}

/* The files are all directly in tmpdir. */
static void remove_tmpdir(void)
{
    DIR *dir = opendir(tmpdir);
    struct dirent *de;
    while (dir != NULL && (de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            unlink(path_in_tmp(de->d_name));
    }
    if (dir != NULL)
        closedir(dir);
    rmdir(tmpdir);
}

static void setup(void)
{
    if (tmpdir[0] == '\0') {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/avt-test-tls.XXXXXX");
        if (mkdtemp(tmpdir) == NULL)
            abort();
        atexit(remove_tmpdir);
    }
    static const char *const vars[] = {"ORCHESTRATOR_URL",
                                       "ORCHESTRATORS_CONFIG",
                                       "MULTI_ORCHESTRATOR_MODE",
                                       "TLS_CA_PATH",
                                       "TLS_CERT_PATH",
                                       "TLS_KEY_PATH",
                                       "TLS_INSECURE",
                                       "WORKER_TOKEN",
                                       "WORKER_TOKEN_FILE",
                                       "WORKER_INDIVIDUAL_TOKEN"};
    for (size_t i = 0; i < ARRAY_LEN(vars); i++)
        unsetenv(vars[i]);
}

TEST(classify_verification_failures)
{
    EXPECT_EQ_INT(tls_classify(CURLE_PEER_FAILED_VERIFICATION,
                               "SSL certificate problem: unable to get local issuer certificate",
                               1),
                  TLS_FAIL_UNKNOWN_CA);
    EXPECT_EQ_INT(
        tls_classify(CURLE_PEER_FAILED_VERIFICATION,
                     "SSL certificate problem: self signed certificate in certificate chain", 1),
        TLS_FAIL_UNKNOWN_CA);
    EXPECT_EQ_INT(tls_classify(CURLE_PEER_FAILED_VERIFICATION,
                               "SSL certificate problem: certificate has expired", 1),
                  TLS_FAIL_EXPIRED);
    EXPECT_EQ_INT(tls_classify(CURLE_PEER_FAILED_VERIFICATION,
                               "SSL: no alternative certificate subject name matches target host "
                               "name '127.0.0.1'",
                               1),
                  TLS_FAIL_NAME_MISMATCH);
    EXPECT_EQ_INT(tls_classify(CURLE_PEER_FAILED_VERIFICATION, NULL, 1), TLS_FAIL_UNKNOWN_CA);
    EXPECT_EQ_INT(tls_classify(CURLE_SSL_CACERT_BADFILE, "error setting certificate file: /x", 1),
                  TLS_FAIL_CA_FILE);
    EXPECT_EQ_INT(tls_classify(CURLE_SSL_CONNECT_ERROR,
                               "error:0A00010B:SSL routines::wrong version number", 1),
                  TLS_FAIL_NOT_TLS);
    EXPECT_EQ_INT(tls_classify(CURLE_RECV_ERROR,
                               "OpenSSL SSL_read: error:0A00045C:SSL routines::tlsv13 alert "
                               "certificate required, errno 0",
                               1),
                  TLS_FAIL_CERT_REQUIRED);
    EXPECT_EQ_INT(tls_classify(CURLE_SSL_CONNECT_ERROR, "tlsv1 alert unknown ca", 1),
                  TLS_FAIL_CERT_REFUSED);
}

TEST(classify_leaves_plain_errors_alone)
{
    char out[AVT_ERRLEN];
    EXPECT_EQ_INT(tls_classify(CURLE_COULDNT_CONNECT, "Failed to connect to x port 1", 1),
                  TLS_FAIL_NONE);
    EXPECT_EQ_INT(tls_classify(CURLE_OK, NULL, 0), TLS_FAIL_NONE);
    /* An empty reply means a refused client certificate only over https. */
    EXPECT_EQ_INT(tls_classify(CURLE_GOT_NOTHING, "Empty reply from server", 0), TLS_FAIL_NONE);
    EXPECT_EQ_INT(tls_classify(CURLE_GOT_NOTHING, "Empty reply from server", 1), TLS_FAIL_HUNG_UP);
    EXPECT_EQ_INT(tls_explain(CURLE_COULDNT_CONNECT, "refused", 1, out, sizeof(out)),
                  TLS_FAIL_NONE);
    EXPECT_EQ_STR(out, "refused");
}

TEST(explain_names_the_fix_and_keeps_the_text)
{
    char out[AVT_ERRLEN];
    tls_explain(CURLE_PEER_FAILED_VERIFICATION, "SSL certificate problem: certificate has expired",
                1, out, sizeof(out));
    EXPECT_CONTAINS(out, "TLS: ");
    EXPECT_CONTAINS(out, "has expired: renew it");
    EXPECT_CONTAINS(out, "(SSL certificate problem: certificate has expired)");
    tls_explain(CURLE_PEER_FAILED_VERIFICATION, NULL, 1, out, sizeof(out));
    EXPECT_CONTAINS(out, "TLS_CA_PATH");
    /* A tiny buffer is still terminated. */
    char tiny[8];
    tls_explain(CURLE_PEER_FAILED_VERIFICATION, NULL, 1, tiny, sizeof(tiny));
    EXPECT_EQ_INT((int)strlen(tiny), 7);
}

TEST(key_file_permissions)
{
    char err[AVT_ERRLEN];
    setup();
    const char *k = write_file("k600", "key", 0600);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), 0);
    k = write_file("k640", "key", 0640);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), -EPERM);
    EXPECT_CONTAINS(err, "mode 0640");
    EXPECT_CONTAINS(err, "chmod 600");
    k = write_file("k604", "key", 0604);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), -EPERM);
    EXPECT_EQ_INT(secfile_check_private(path_in_tmp("missing"), err, sizeof(err)), -ENOENT);
    EXPECT_CONTAINS(err, "cannot read");
    EXPECT_EQ_INT(secfile_check_readable(tmpdir, err, sizeof(err)), -EINVAL);
    EXPECT_CONTAINS(err, "not a regular file");
}

/* Give path a POSIX ACL: the owner r, `user` (when not -1) r, the group
 * `group_perm`, others nothing, the mask r (the kernel's xattr format).
 * 0, or -1 when the file system takes no ACLs. */
static int set_acl(const char *path, long user, unsigned group_perm)
{
    unsigned char buf[4 + 8 * 5], *p = buf + 4;
    const unsigned tags[] = {0x01, 0x02, 0x04, 0x10, 0x20};
    const unsigned perms[] = {4, 4, group_perm, 4 | group_perm, 0};
    buf[0] = 2, buf[1] = buf[2] = buf[3] = 0;
    for (size_t i = 0; i < ARRAY_LEN(tags); i++) {
        if (tags[i] == 0x02 && user < 0)
            continue;
        uint32_t id = tags[i] == 0x02 ? (uint32_t)user : 0xffffffffu;
        p[0] = (unsigned char)tags[i], p[1] = 0, p[2] = (unsigned char)perms[i], p[3] = 0;
        for (int b = 0; b < 4; b++)
            p[4 + b] = (unsigned char)(id >> (8 * b));
        p += 8;
    }
    return setxattr(path, "system.posix_acl_access", buf, (size_t)(p - buf), 0);
}

/* A systemd credential on a file system with ACLs: mode 0400 plus an entry
 * for the service's user, which st_mode shows as 0440. Accepted; an ACL
 * that lets anyone else read is not. */
TEST(key_file_acls)
{
    char err[AVT_ERRLEN];
    setup();
    const char *k = write_file("cred", "key", 0400);
    if (set_acl(k, (long)geteuid(), 0) < 0) {
        printf("# no ACLs on %s (%s): skipped\n", tmpdir, strerror(errno));
        return;
    }
    struct stat st;
    EXPECT(stat(k, &st) == 0 && (st.st_mode & 07777) == 0440);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), 0);

    long other = geteuid() == 4242 ? 4243 : 4242;
    k = write_file("acl-other", "key", 0600);
    ASSERT(set_acl(k, other, 0) == 0);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), -EPERM);
    char want[128];
    snprintf(want, sizeof(want), "its ACL lets user %ld access it", other);
    EXPECT_CONTAINS(err, want);
    EXPECT_CONTAINS(err, "setfacl -b");

    k = write_file("acl-group", "key", 0600);
    ASSERT(set_acl(k, -1, 4) == 0);
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), -EPERM);
    EXPECT_CONTAINS(err, "its ACL lets its group access it");

    k = write_file("acl-others", "key", 0600);
    ASSERT(set_acl(k, (long)geteuid(), 0) == 0);
    ASSERT(chmod(k, 0444) == 0); /* others: r, whatever the ACL's entries */
    EXPECT_EQ_INT(secfile_check_private(k, err, sizeof(err)), -EPERM);
    EXPECT_CONTAINS(err, "chmod 600");
}

static struct cfg *load(const char *ini_text, char *err, size_t errlen)
{
    struct cfg *cfg = NULL;
    const char *p = ini_text ? write_file("w.ini", ini_text, 0644) : NULL;
    if (cfg_load(p, &cfg, err, errlen) < 0)
        return NULL;
    return cfg;
}

TEST(single_url_is_a_list_of_one)
{
    char err[AVT_ERRLEN];
    setup();
    struct cfg *c = load("[orchestrator]\nurl = https://o.example/\n", err, sizeof(err));
    ASSERT(c != NULL);
    EXPECT_EQ_INT((int)c->norchs, 1);
    EXPECT_EQ_INT(c->orchs_listed, 0);
    EXPECT_EQ_STR(c->orchs[0].url, "https://o.example");
    EXPECT(c->orchs[0].token == NULL);
    EXPECT_EQ_INT(c->multi_mode, CFG_MULTI_FAILOVER);
    EXPECT(c->tls_ca_file == NULL && c->tls_cert_file == NULL && !c->tls_insecure);
    cfg_destroy(c);
}

TEST(ini_sections_sorted_with_tokens)
{
    char err[AVT_ERRLEN];
    setup();
    const char *tf = write_file("tok", "from-file\n", 0600);
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[orchestrator]\nmulti_mode = round_robin\n"
             "[orchestrator.zeta]\nurl = http://z\npriority = 1\nweight = 5\ntoken = tz\n"
             "[orchestrator.alpha]\nurl = http://a\npriority = 2\ntoken_file = %s\n"
             "[orchestrator.beta]\nurl = http://b\npriority = 1\n",
             tf);
    struct cfg *c = load(ini, err, sizeof(err));
    ASSERT(c != NULL);
    EXPECT_EQ_INT((int)c->norchs, 3);
    EXPECT_EQ_INT(c->orchs_listed, 1);
    EXPECT_EQ_INT(c->multi_mode, CFG_MULTI_ROUND_ROBIN);
    /* (priority, url): b (1), z (1), a (2). */
    EXPECT_EQ_STR(c->orchs[0].name, "beta");
    EXPECT_EQ_STR(c->orchs[1].name, "zeta");
    EXPECT_EQ_INT(c->orchs[1].weight, 5);
    EXPECT_EQ_STR(c->orchs[1].token, "tz");
    EXPECT_EQ_STR(c->orchs[2].token, "from-file");
    EXPECT_EQ_STR(c->url, "http://b");
    cfg_destroy(c);
}

TEST(env_list_replaces_ini_list)
{
    char err[AVT_ERRLEN];
    setup();
    setenv(
        "ORCHESTRATORS_CONFIG",
        "[{\"url\": \"http://e2\", \"priority\": 3}, {\"url\": \"http://e1\", \"token\": \"t\"}]",
        1);
    struct cfg *c = load("[orchestrator.x]\nurl = http://x\n", err, sizeof(err));
    unsetenv("ORCHESTRATORS_CONFIG");
    ASSERT(c != NULL);
    EXPECT_EQ_INT((int)c->norchs, 2);
    EXPECT_EQ_STR(c->orchs[0].url, "http://e2"); /* priority 3 < default 10 */
    EXPECT_EQ_STR(c->orchs[0].name, "orch1");
    EXPECT_EQ_STR(c->orchs[1].token, "t");
    cfg_destroy(c);
}

TEST(bad_lists_and_tls_are_refused)
{
    char err[AVT_ERRLEN];
    setup();
    EXPECT(load("[orchestrator.a]\nweight = 0\nurl = http://a\n", err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "w.ini:2: orchestrator.a.weight");
    EXPECT(load("[orchestrator.a]\ncolour = red\n", err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "unknown key");
    EXPECT(load("[orchestrator.a]\ntoken = x\ntoken_file = /x\n", err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "both set");
    EXPECT(load("[orchestrator.b]\nurl = http://b\n[orchestrator.c]\nurl = http://b/\n", err,
                sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "listed twice");
    const char *k = write_file("k644", "key", 0644);
    char ini[512];
    snprintf(ini, sizeof(ini), "[tls]\ncert_file = %s\nkey_file = %s\n", k, k);
    EXPECT(load(ini, err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "w.ini:3: key_file");
    EXPECT_CONTAINS(err, "chmod 600");
    snprintf(ini, sizeof(ini), "[tls]\nkey_file = %s\n", k);
    EXPECT(load(ini, err, sizeof(err)) == NULL);
    EXPECT_CONTAINS(err, "needs both");
    setenv("TLS_CA_PATH", path_in_tmp("nope.pem"), 1);
    EXPECT(load(NULL, err, sizeof(err)) == NULL);
    unsetenv("TLS_CA_PATH");
    EXPECT_CONTAINS(err, "environment: TLS_CA_PATH: cannot read");
}

TEST(dump_shows_tls_and_masks_orchestrator_tokens)
{
    char err[AVT_ERRLEN];
    setup();
    const char *k = write_file("k600b", "key", 0600);
    char ini[512];
    snprintf(ini, sizeof(ini),
             "[tls]\ncert_file = %s\nkey_file = %s\ninsecure_skip_verify = yes\n"
             "[orchestrator.a]\nurl = https://a\ntoken = s3cret-a\n",
             k, k);
    struct cfg *c = load(ini, err, sizeof(err));
    ASSERT(c != NULL);
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    cfg_dump(c, fp);
    fclose(fp);
    EXPECT_CONTAINS(text, "[tls]\n");
    EXPECT_CONTAINS(text, "insecure_skip_verify = true");
    EXPECT_CONTAINS(text, "[orchestrator.a]\nurl = https://a\n");
    EXPECT_CONTAINS(text, "token = ********");
    EXPECT(strstr(text, "s3cret-a") == NULL);
    free(text);
    cfg_destroy(c);
}

TAP_MAIN()
