"""The local moto S3 server: plain HTTP and TLS behind a private CA, started and stopped cleanly."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from whisper_pipeline.testing.local_s3 import LocalS3Server, free_port


def test_tls_server_is_trusted_only_through_its_ca(s3_tls_server):
    assert s3_tls_server.endpoint_url.startswith("https://127.0.0.1:")
    ca = x509.load_pem_x509_certificate(s3_tls_server.ca_bundle.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server_cert = x509.load_pem_x509_certificate((s3_tls_server.ca_bundle.parent / "server.pem").read_bytes())
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    trusting = ssl.create_default_context(cafile=str(s3_tls_server.ca_bundle))
    with urllib.request.urlopen(s3_tls_server.endpoint_url, context=trusting, timeout=10) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(s3_tls_server.endpoint_url, context=ssl.create_default_context(), timeout=10)


def test_env_and_client_round_trip(s3_tls_server, s3_server, tmp_path):
    env = s3_tls_server.env("demo")
    assert env["S3_ENDPOINT_URL"] == s3_tls_server.endpoint_url and env["S3_BUCKET_NAME"] == "demo"
    assert env["AWS_CA_BUNDLE"] == str(s3_tls_server.ca_bundle)
    assert {key: env[key] for key in s3_tls_server.credentials} == s3_tls_server.credentials
    assert "AWS_CA_BUNDLE" not in s3_server.env() and "S3_BUCKET_NAME" not in s3_server.env()
    for server in (s3_tls_server, s3_server):
        bucket = f"round-trip-{free_port()}"
        server.create_bucket(bucket)
        (tmp_path / "a.bin").write_bytes(b"\x00\x01file")
        server.upload_file(bucket, "dir/a.bin", tmp_path / "a.bin")
        server.put_bytes(bucket, "b.bin", b"bytes")
        read = server.client().get_object(Bucket=bucket, Key="dir/a.bin")["Body"].read()
        assert read == b"\x00\x01file"
        assert server.client().get_object(Bucket=bucket, Key="b.bin")["Body"].read() == b"bytes"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("tls", [False, True])
def test_the_server_stops_on_exit_even_after_an_error(tls, tmp_path):
    port = free_port()
    with pytest.raises(RuntimeError, match="inside"), LocalS3Server(tls, tmp_path, port=port) as server:
        assert server.port == port and _accepts(port)
        server.create_bucket("stop-test")
        raise RuntimeError("inside")
    assert not _accepts(port)
    if tls:
        assert {path.name for path in (tmp_path / "certs").iterdir()} == {
            "ca.pem",
            "server.pem",
            "server.key",
        }


def test_a_tls_server_that_cannot_start_says_why(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with (
            pytest.raises(RuntimeError, match=f"did not start on port {port}"),
            LocalS3Server(True, tmp_path, port=port),
        ):
            pass  # pragma: no cover
