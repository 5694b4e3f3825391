"""Certificates and keys for the local control plane.

One CA signs the API server's serving certificate and one client certificate per component, so every
component authenticates as itself and RBAC applies to it as in a real cluster. Keys are small ECDSA
keys (fast to make); the service-account signing key is RSA because every Kubernetes version accepts it.
A service beside the cluster (NVSentinel's PostgreSQL) gets a CA of its own (ensure_server_pki), so
its client certificates are never valid towards the API server.
"""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)

# (file stem, common name, organisation): the identities the components present to the API server.
CLIENTS = (
    ("admin", "localcluster-admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    ("kwok", "localcluster-kwok", "system:masters"),
    # The API server's identity towards aggregated API servers (the request-header scheme).
    ("front-proxy-client", "front-proxy-client", None),
)


def _name(cn, org=None):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject, issuer, public_key):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY))


def _new_ca(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(pki_dir, ca, stem, cn, org, usage, sans=None):
    """Write <stem>.key and <stem>.crt, signed by ca = (key, certificate)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(cn, org), ca_cert.subject, key.public_key())
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(os.path.join(pki_dir, stem + ".key"), _key_pem(key))
    _write(os.path.join(pki_dir, stem + ".crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _sans(ips, dns):
    return ([x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            + [x509.DNSName(name) for name in dns])


def ensure_pki(pki_dir, server_ips, server_dns):
    """Create the CA, serving, client and service-account material in pki_dir if missing."""
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    ca_crt = os.path.join(pki_dir, "ca.crt")
    if os.path.exists(ca_crt):
        return
    ca = _new_ca("localcluster-ca")
    _write(os.path.join(pki_dir, "ca.key"), _key_pem(ca[0]))
    _issue(pki_dir, ca, "apiserver", "kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH,
           _sans(server_ips, server_dns))
    for stem, cn, org in CLIENTS:
        _issue(pki_dir, ca, stem, cn, org, ExtendedKeyUsageOID.CLIENT_AUTH)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(os.path.join(pki_dir, "sa.key"), _key_pem(sa_key))
    _write(os.path.join(pki_dir, "sa.pub"), sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    # The CA certificate goes last: its presence marks the directory as complete.
    _write(ca_crt, ca[1].public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_server_pki(pki_dir, ca_cn, server_cn, server_ips, clients):
    """A CA of its own, one serving certificate (server.crt/.key) and client certificates
    (<common name>.crt/.key), for a service that trusts no other CA (e.g. PostgreSQL), if missing."""
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    ca_crt = os.path.join(pki_dir, "ca.crt")
    if os.path.exists(ca_crt):
        return
    ca = _new_ca(ca_cn)
    _issue(pki_dir, ca, "server", server_cn, None, ExtendedKeyUsageOID.SERVER_AUTH, _sans(server_ips, []))
    for cn in clients:
        _issue(pki_dir, ca, cn, cn, None, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(ca_crt, ca[1].public_bytes(serialization.Encoding.PEM), 0o644)
