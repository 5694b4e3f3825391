"""Certificates and keys for the local control plane.

One CA signs the API server's serving certificate and one client certificate per component, so every
component authenticates as itself and RBAC applies to it as in a real cluster. Keys are small ECDSA
keys (fast to make); the service-account signing key is RSA because every Kubernetes version accepts it.
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


def ensure_pki(pki_dir, server_ips, server_dns):
    """Create the CA, serving, client and service-account material in pki_dir if missing."""
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    ca_crt = os.path.join(pki_dir, "ca.crt")
    if os.path.exists(ca_crt):
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("localcluster-ca")
    ca = (_builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(os.path.join(pki_dir, "ca.key"), _key_pem(ca_key))

    def issue(stem, cn, org, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (_builder(_name(cn, org), ca_name, key.public_key())
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(os.path.join(pki_dir, stem + ".key"), _key_pem(key))
        _write(os.path.join(pki_dir, stem + ".crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)

    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    sans += [x509.DNSName(name) for name in server_dns]
    issue("apiserver", "kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    for stem, cn, org in CLIENTS:
        issue(stem, cn, org, ExtendedKeyUsageOID.CLIENT_AUTH)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(os.path.join(pki_dir, "sa.key"), _key_pem(sa_key))
    _write(os.path.join(pki_dir, "sa.pub"), sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    # The CA certificate goes last: its presence marks the directory as complete.
    _write(ca_crt, ca.public_bytes(serialization.Encoding.PEM), 0o644)
