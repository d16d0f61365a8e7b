"""A throwaway PKI and a one-member etcd that demands client certificates, for the TLS tests.

`make_pki(root)` runs the `openssl` CLI to make two CAs ("ca" and "other"), a server
certificate of "ca" for 127.0.0.1 and localhost (for client use too: etcd's gateway
presents it to etcd itself), and client certificates of "ca": "client" with a common
name, "anonymous" without (etcd 3.4's gateway refuses a certificate with a common name
once authentication is enabled); keys are mode 0600. `sign(root, name, subject, ...)`
makes one more key and certificate of either CA.
`tls_etcd(root, pki)` runs Debian's etcd on free 127.0.0.1 ports serving https with
`--client-cert-auth`, waits until it answers /health (with the client certificate),
yields the member and kills it by pid on leaving; `tls_keys(pki)` is the `[cluster]`
TLS keys' text for a daemon. Without `openssl` or
`etcd` the calling test is skipped loudly. Nothing machine-wide changes.
"""
import contextlib
import shutil
import ssl
import subprocess
from pathlib import Path

import attrs
import httpx
import pytest

from etcdcluster import EtcdMember, etcd_binary, free_ports, wait_healthy

SERVER_EXTENSIONS = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
CLIENT_EXTENSIONS = "extendedKeyUsage=clientAuth\n"


@attrs.frozen
class Pki:
    """The files of the test PKI: CA bundles, the server's and the client's certificate and key."""

    root: Path

    def __call__(self, name: str) -> str:
        """The path of file `name` ("ca.pem", "client.key", ...)."""
        return str(self.root / name)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """One throwaway PKI for the whole run (five RSA keys: a few seconds of openssl)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(root: Path) -> Pki:
    """Two CAs (ca, other), a server and two client certificates signed by `ca`, under `root`."""
    if not shutil.which("openssl"):
        pytest.skip("*** openssl is not installed: ETCD TLS TESTS ARE SKIPPED ***")
    root.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=apeinxfs test {ca}",
                "-keyout", str(root / f"{ca}.key"), "-out", str(root / f"{ca}.pem"))
    for name, subject, extensions in (("server", "/CN=apeinxfs test server", SERVER_EXTENSIONS),
                                      ("client", "/CN=apeinxfs test client", CLIENT_EXTENSIONS),
                                      ("anonymous", "/O=apeinxfs test", CLIENT_EXTENSIONS)):
        sign(root, name, subject, extensions)
    for key in root.glob("*.key"):
        key.chmod(0o600)
    return Pki(root)


def sign(root: Path, name: str, subject: str, extensions: str = CLIENT_EXTENSIONS, ca: str = "ca") -> None:
    """A new key `name`.key and its certificate `name`.pem for `subject`, signed by CA `ca`, under `root`."""
    (root / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.csr"))
    openssl("x509", "-req", "-days", "2", "-in", str(root / f"{name}.csr"), "-CA", str(root / f"{ca}.pem"),
            "-CAkey", str(root / f"{ca}.key"), "-CAcreateserial", "-extfile", str(root / f"{name}.ext"),
            "-out", str(root / f"{name}.pem"))
    (root / f"{name}.key").chmod(0o600)


class TlsMember(EtcdMember):
    """A one-member etcd serving its clients over https, requiring a certificate of the test CA."""

    def __init__(self, root: Path, pki: Pki, extra: tuple[str, ...] = ()):
        super().__init__("tls0", *free_ports(2), root)
        self.client_url = self.client_url.replace("http://", "https://")
        self.pki, self.extra = pki, extra
        context = ssl.create_default_context(cafile=pki("ca.pem"))
        context.load_cert_chain(pki("client.pem"), pki("client.key"))
        self.verify = context  # /health and the gateway's answers, with the client certificate

    def command(self, binary: str, initial_cluster: str) -> list[str]:
        return super().command(binary, initial_cluster) + [
            "--cert-file", self.pki("server.pem"), "--key-file", self.pki("server.key"),
            "--trusted-ca-file", self.pki("ca.pem"), "--client-cert-auth", *self.extra]


@contextlib.contextmanager
def tls_etcd(root: Path, pki: Pki, extra: tuple[str, ...] = ()):
    """A TlsMember under `root`, started and healthy; killed by pid on leaving."""
    root.mkdir(parents=True, exist_ok=True)
    member = TlsMember(root, pki, extra)
    member.start(etcd_binary(), f"{member.name}={member.peer_url}")
    try:
        wait_healthy([member])
        yield member
    finally:
        member.kill()


def tls_keys(pki: Pki, cert: str = "client", **paths: str | None) -> str:
    """The `[cluster]` TLS keys: etcd_ca the test CA, etcd_cert and etcd_key client certificate `cert`
    ("client", "anonymous") and its key, each as `paths` changes it (None leaves the key out)."""
    keys = {"etcd_ca": pki("ca.pem"), "etcd_cert": pki(f"{cert}.pem"), "etcd_key": pki(f"{cert}.key")} | paths
    return "".join(f'{key} = "{path}"\n' for key, path in keys.items() if path is not None)


def gateway(member: TlsMember, path: str, body: dict) -> dict:
    """POST `body` to the member's gateway at /v3/`path` with the test's certificate; its JSON answer,
    asserting HTTP 200 (for setting up users and roles, before authentication is enabled)."""
    answer = httpx.post(f"{member.client_url}/v3/{path}", json=body, verify=member.verify)
    assert answer.status_code == 200, (path, answer.text)
    return answer.json()


def enable_auth(member: TlsMember, root_password: str) -> None:
    """Add user root with `root_password` and role root, and enable etcd's authentication."""
    for path, body in (("auth/user/add", {"name": "root", "password": root_password}),
                       ("auth/role/add", {"name": "root"}), ("auth/user/grant", {"user": "root", "role": "root"}),
                       ("auth/enable", {})):
        gateway(member, path, body)
