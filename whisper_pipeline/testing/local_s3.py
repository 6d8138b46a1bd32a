"""A local S3 server (moto) for the embedded demo, the benchmarks and the tests: no Docker, no network.

The `moto_server` command in a process of its own, over plain HTTP or over TLS with a server certificate
signed by a private CA generated on the spot: the client trusts it only through a CA bundle path, exactly
like a MinIO behind a corporate CA.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from whisper_pipeline.prepare.sources import S3Settings, make_s3_client

# Fixed fake keys: moto accepts any, and a user copying the demo's settings copies nothing secret.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local-demo-access-key", "AWS_SECRET_ACCESS_KEY": "local-demo-secret-key"}
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("whisper-pipeline local CA"))
        .issuer_name(name("whisper-pipeline local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


class LocalS3Server:
    """`with LocalS3Server(tls=True, workdir=...) as server:` a moto S3 endpoint on 127.0.0.1."""

    def __init__(self, tls: bool, workdir: Path, port: int | None = None):
        self.tls = tls
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.ca_bundle: Path | None = None
        self._process: subprocess.Popen | None = None
        self._client = None

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        return dict(CREDENTIALS)

    def env(self, bucket: str | None = None) -> dict[str, str]:
        """The settings a pipeline run needs to use this server (what a user puts in .env)."""
        env = {"S3_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": "us-east-1", **CREDENTIALS}
        if self.ca_bundle is not None:
            env["AWS_CA_BUNDLE"] = str(self.ca_bundle)
        if bucket:
            env["S3_BUCKET_NAME"] = bucket
        return env

    def client(self):
        if self._client is None:
            self._client = make_s3_client(S3Settings.from_env(self.env()))
        return self._client

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def upload_file(self, bucket: str, key: str, path: Path) -> None:
        self.put_bytes(bucket, key, Path(path).read_bytes())

    def __enter__(self) -> LocalS3Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A process of its own, as a real S3 is: its requests never wait on the caller's GIL.
        moto_server = Path(sys.executable).with_name("moto_server")
        command = [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            self.ca_bundle, cert, key = write_certificates(self.workdir / "certs")
            command += ["-s", "-c", str(cert), "-k", str(key)]
        with open(self.workdir / "moto_server.log", "wb") as log:  # quiet here, kept for a failed start
            self._process = subprocess.Popen(command, stdout=log, stderr=log)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until a request (over TLS: trusting only our CA) is answered; the port opens before TLS works."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self._process.poll() is None:
            if self.ca_bundle is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            else:
                context = ssl.create_default_context(cafile=str(self.ca_bundle))
                connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=2)
            try:
                connection.request("GET", "/")
                connection.getresponse().read()
                return
            except OSError:
                time.sleep(0.1)
            finally:
                connection.close()
        self.__exit__(None, None, None)
        log = (self.workdir / "moto_server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"moto_server did not start on port {self.port} within {START_TIMEOUT_S:.0f} s: {log}"
        )

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
