"""tlscerts.py: a small PKI made at test time with Debian's openssl, for the
TLS tests (test_tls.py, test_multi.py).

    pki = make_pki(dir, worker_id="w1")
    pki.ca                      CA certificate (PEM) that signs the rest
    pki.server, pki.server_key  for 127.0.0.1 and localhost
    pki.wrong_name(_key)        valid, signed by the CA, for wrong.example only
    pki.expired(_key)           for 127.0.0.1, expired
    pki.rogue(_key)             for 127.0.0.1, signed by another CA (unknown to the worker)
    pki.client, pki.client_key  client certificate CN=worker_id (key mode 0600)

EC P-256 keys keep it fast. The expired certificate is made with -days 0
(notAfter = now), so it is expired from the next second on.
"""
import os
import subprocess
import time

OPENSSL = "openssl"


def _run(*args, cwd):
    subprocess.run([OPENSSL] + list(args), cwd=cwd, check=True, capture_output=True)


def _key(d, name):
    path = os.path.join(d, name + ".key")
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path, cwd=d)
    os.chmod(path, 0o600)
    return path


def _ca(d, name):
    key = _key(d, name)
    cert = os.path.join(d, name + ".pem")
    _run("req", "-x509", "-new", "-key", key, "-subj", "/CN=%s" % name, "-days", "30", "-out", cert,
         "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=d)
    return cert, key


def _leaf(d, name, cn, ca, ca_key, san=None, days=30, client=False):
    key = _key(d, name)
    csr = os.path.join(d, name + ".csr")
    cert = os.path.join(d, name + ".pem")
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        if san:
            f.write("subjectAltName=%s\n" % san)
        f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
    _run("req", "-new", "-key", key, "-subj", "/CN=%s" % cn, "-out", csr, cwd=d)
    _run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", str(days), "-extfile", ext, cwd=d)
    return cert, key


class Pki:
    pass


def make_pki(d, worker_id="w1"):
    os.makedirs(d, exist_ok=True)
    p = Pki()
    p.dir = d
    p.ca, p.ca_key = _ca(d, "ca")
    other_ca, other_key = _ca(d, "otherca")
    here = "IP:127.0.0.1,DNS:localhost"
    p.server, p.server_key = _leaf(d, "server", "127.0.0.1", p.ca, p.ca_key, here)
    p.wrong_name, p.wrong_name_key = _leaf(d, "wrongname", "wrong.example", p.ca, p.ca_key,
                                           "DNS:wrong.example")
    p.expired, p.expired_key = _leaf(d, "expired", "127.0.0.1", p.ca, p.ca_key, here, days=0)
    p.rogue, p.rogue_key = _leaf(d, "rogue", "127.0.0.1", other_ca, other_key, here)
    p.client, p.client_key = _leaf(d, "client", worker_id, p.ca, p.ca_key, client=True)
    p.other_client, p.other_client_key = _leaf(d, "otherclient", worker_id, other_ca, other_key,
                                               client=True)
    time.sleep(1.1)  # -days 0: notAfter is this second; from the next one on it is expired
    return p
