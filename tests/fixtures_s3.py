"""S3 backend fixtures: an in-process moto server; the conformance suite runs on S3.

``moto_server`` (session) starts moto's ThreadedMotoServer on 127.0.0.1 with a free
port and stops it at the end. ``s3_env`` (per test) points the boto3 credential
chain at dummy credentials and away from the user's ~/.aws, and restores the
environment afterwards. ``s3_buckets(n)`` creates fresh, uniquely named buckets.
``fault_proxy(**rates)`` puts a fault-injecting proxy (s3_fault_proxy.py) in front of
the moto server; request it before ``mount_factory`` so that mounts are unmounted
while the proxy still forwards.
"""

from __future__ import annotations

import uuid

import pytest

TEST_ACCESS_KEY = "testing-access-key"
TEST_SECRET_KEY = "testing-secret-key-do-not-leak"
TEST_REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_server():
    """Endpoint URL of a moto S3 server running in this process."""
    moto_server_mod = pytest.importorskip("moto.server")
    server = moto_server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """Dummy credentials in the environment, nothing from ~/.aws; restored after the test."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_admin(moto_server):
    """A plain boto3 client on the moto server (to create, inspect and damage objects)."""
    import boto3
    client = boto3.session.Session().client(
        "s3", endpoint_url=moto_server, region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY)
    yield client
    client.close()


@pytest.fixture
def s3_buckets(s3_admin, s3_env):
    """``s3_buckets(n)`` -> n fresh bucket names (unique per call)."""
    def make(n: int = 3) -> list[str]:
        tag = uuid.uuid4().hex[:12]
        names = [f"gf-{tag}-{i}" for i in range(n)]
        for b in names:
            s3_admin.create_bucket(Bucket=b)
        return names
    return make


@pytest.fixture
def fault_proxy(moto_server):
    """``fault_proxy(**rates)`` -> a started FaultProxy in front of the moto server."""
    from s3_fault_proxy import FaultProxy
    started: list[FaultProxy] = []

    def make(**rates) -> FaultProxy:
        proxy = FaultProxy(moto_server, **rates).start()
        started.append(proxy)
        return proxy
    yield make
    for p in started:
        p.stop()


def s3_factory(request, tmp_path):
    from gffs_backends.s3 import S3Backend
    endpoint = request.getfixturevalue("moto_server")
    buckets = request.getfixturevalue("s3_buckets")(3)
    return S3Backend.from_config("s3", {"buckets": buckets, "endpoint_url": endpoint,
                                        "region": TEST_REGION, "timeout": 10})


BACKEND_FACTORIES = [pytest.param(s3_factory, id="s3")]


class Mangler:
    """WSGI middleware over moto's app: while ``methods`` names an HTTP method, answers
    to it keep their status but lose what S3 promises: a body becomes garbage (not
    XML), the ETag / Content-Length / Content-Type headers go. The request is still
    carried out."""

    def __init__(self, app) -> None:
        self.app = app
        self.methods: set[str] = set()
        self.mangled = 0

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in self.methods:
            return self.app(environ, start_response)
        seen: dict = {}

        def capture(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return lambda data: None
        body = b"".join(self.app(environ, capture))
        head = environ["REQUEST_METHOD"] == "HEAD"
        headers = [(k, v) for k, v in seen["headers"]
                   if k.lower() not in ("etag", "content-length", "content-type")]
        if body and not head:
            body = b"\x00<html>upstream proxy error</htm"
        if not head:
            headers.append(("Content-Length", str(len(body))))
        self.mangled += 1
        start_response(seen["status"], headers)
        return [body]


@pytest.fixture(scope="session")
def mangling_s3(moto_server):
    """(endpoint URL, Mangler) of a second S3 endpoint on the same moto state."""
    import threading

    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import make_server
    mangler = Mangler(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, mangler, threaded=True,
                         request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="mangling-s3")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", mangler
    finally:
        server.shutdown()
        thread.join(10)
