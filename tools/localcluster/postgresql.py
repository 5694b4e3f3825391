"""NVSentinel's datastore beside the local control plane: Debian's PostgreSQL on 127.0.0.1.

NVSentinel's values-postgresql.yaml runs PostgreSQL inside the cluster (the Bitnami subchart, a
container image) with TLS and client-certificate authentication (sslmode verify-full, pg_hba
`hostssl ... cert`). No image can run here, so the same server runs as a local process: Debian's
postgresql-<PG_MAJOR>, data under <state>/nvsentinel/postgresql/, listening on 127.0.0.1 only (no
Unix socket), with the same TLS and certificate authentication. The certificates come from a CA of
its own (pki.ensure_server_pki) instead of cert-manager; the client certificate (CN postgres) goes
into the Secret the chart mounts, postgresql-client-cert. NVSentinel's store-client creates its
tables itself on first connect; only the empty database is made here.

PostgreSQL refuses to run as root: when the tooling runs as root, the server runs as Debian's
`postgres` user (created by the package), so the directories above its data are made traversable.
"""
import os
import pwd
import shutil
import subprocess

import pki

PG_MAJOR = "15"                  # the Debian package postgresql-15 pins the major version
DATABASE = "nvsentinel"          # values-postgresql.yaml: global.datastore.connection.database
USER = "postgres"                # ... connection.username, and the client certificate's CN
CLIENT_SECRET = "postgresql-client-cert"   # the Secret NVSentinel's pods mount (chart templates)
HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Paths:
    def __init__(self, state_dir):
        self.base = os.path.join(state_dir, "nvsentinel", "postgresql")
        self.data = os.path.join(self.base, "data")
        self.pki = os.path.join(self.base, "pki")
        self.bin = "/usr/lib/postgresql/%s/bin" % PG_MAJOR


def settings():
    """postgresql.conf lines: TLS with our certificates, no durability (addresses: command())."""
    return {
        "ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'",
        "ssl_ca_file": "'ca.crt'",
        # NVSentinel's components keep connection pools: 7 processes on a 3-node cluster.
        "max_connections": "200",
        # A throwaway test store, like etcd's --unsafe-no-fsync: durability is not worth a sync.
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "log_destination": "'stderr'", "logging_collector": "off",
    }


# Only NVSentinel's user, only its database, only over TLS, only with a client certificate whose
# CN is the user name: values-postgresql.yaml's `hostssl ... cert`, narrowed to loopback.
HBA = "hostssl %s %s %s/32 cert\n" % (DATABASE, USER, HOST)


def server_user():
    """(uid, gid) to run the server as: ours, unless we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root, and there is no `postgres` user to run PostgreSQL as "
                           "(Debian's postgresql-%s package creates it)" % PG_MAJOR) from None
    return pw.pw_uid, pw.pw_gid


def install():
    subprocess.run([os.path.join(ROOT, "tools", "debian-packages.sh"), "postgresql-" + PG_MAJOR],
                   check=True)


def _as_user(ids):
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def ensure_initialised(paths, state_dir):
    """Create the certificates, the data directory and the empty database, if missing."""
    pki.ensure_server_pki(paths.pki, "nvsentinel-postgresql-ca", HOST, [HOST], [USER])
    if initialised(paths):
        return
    ids = server_user()
    if ids:
        # The server's user must reach its data directory through the state directory (0700).
        d = paths.base
        while True:
            os.chmod(d, os.stat(d).st_mode | 0o011)
            if d == state_dir:
                break
            d = os.path.dirname(d)
    shutil.rmtree(paths.data, ignore_errors=True)
    os.makedirs(paths.data, mode=0o700)
    if ids:
        os.chown(paths.data, *ids)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    subprocess.run([os.path.join(paths.bin, "initdb"), "-D", paths.data, "-U", USER, "-E", "UTF8",
                    "--auth=reject", "--no-instructions"], check=True, env=env,
                   stdout=subprocess.DEVNULL, **_as_user(ids))
    for src, dst in (("server.crt", "server.crt"), ("server.key", "server.key"), ("ca.crt", "ca.crt")):
        target = os.path.join(paths.data, dst)
        shutil.copyfile(os.path.join(paths.pki, src), target)
        os.chmod(target, 0o600)
        if ids:
            os.chown(target, *ids)
    with open(os.path.join(paths.data, "postgresql.auto.conf"), "a", encoding="utf-8") as f:
        f.writelines("%s = %s\n" % kv for kv in settings().items())
    with open(os.path.join(paths.data, "pg_hba.conf"), "w", encoding="utf-8") as f:
        f.write(HBA)
    # The database, made in single-user mode: no connection, so no credential, is ever needed.
    single = subprocess.run([os.path.join(paths.bin, "postgres"), "--single", "-D", paths.data, "postgres"],
                            input=b"CREATE DATABASE %s;\n" % DATABASE.encode(), env=env, check=False,
                            capture_output=True, **_as_user(ids))
    if single.returncode or b"ERROR" in single.stderr:
        raise RuntimeError("creating the database %s failed: %s" % (DATABASE, single.stderr.decode()[-2000:]))


def initialised(paths):
    return os.path.exists(os.path.join(paths.data, "PG_VERSION"))


def command(paths, port):
    """The server on 127.0.0.1:port only: TCP on loopback, no Unix socket."""
    return [os.path.join(paths.bin, "postgres"), "-D", paths.data, "-c", "listen_addresses=" + HOST,
            "-c", "port=%d" % port, "-c", "unix_socket_directories="]


def spawn_options():
    """Extra subprocess.Popen arguments for the server process."""
    return _as_user(server_user())


def accepting(paths, port):
    """The server accepts connections (pg_isready: no authentication needed)."""
    return subprocess.run([os.path.join(paths.bin, "pg_isready"), "-q", "-h", HOST, "-p", str(port)],
                          check=False).returncode == 0


def client_secret_data(paths):
    """The Secret postgresql-client-cert as cert-manager would write it: ca.crt, tls.crt, tls.key."""
    data = {}
    for key, name in (("ca.crt", "ca.crt"), ("tls.crt", USER + ".crt"), ("tls.key", USER + ".key")):
        with open(os.path.join(paths.pki, name), encoding="utf-8") as f:
            data[key] = f.read()
    return data
