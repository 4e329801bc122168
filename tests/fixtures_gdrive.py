"""The Google Drive backend joins the conformance suite against tests/drive_server.py.

``drive_server_session`` runs one loopback Drive endpoint for the whole session
(always shut down); ``drive`` hands it to a test and clears injected faults
afterwards. Every backend gets a fresh folder, so it starts empty. The
conformance backend is built through ``from_config`` from an installed-app token
file (mode 0600) whose token_uri is the loopback server, so each test also runs
the real google-auth refresh flow.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import uuid
from pathlib import Path

import pytest

from drive_server import DriveServer
from gffs_backends.gdrive import DriveBackend


@pytest.fixture(scope="session")
def drive_server_session():
    server = DriveServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def drive(drive_server_session):
    drive_server_session.clear_faults()
    yield drive_server_session
    drive_server_session.clear_faults()


def write_secret(path: Path, info: dict, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(info))
    os.chmod(path, mode)
    return path


def token_file(server: DriveServer, path: Path, mode: int = 0o600) -> Path:
    """An installed-app (authorized-user) token file whose refresh token the server accepts."""
    client_id = f"client-{uuid.uuid4().hex[:8]}.apps.googleusercontent.com"
    client_secret = "GOCSPX-" + secrets.token_urlsafe(18)
    refresh = "1//" + secrets.token_urlsafe(32)
    server.add_refresh_token(refresh, client_id, client_secret)
    return write_secret(path, {"type": "authorized_user", "client_id": client_id,
                               "client_secret": client_secret, "refresh_token": refresh,
                               "token_uri": server.token_uri}, mode)


@functools.lru_cache(maxsize=1)
def _rsa_key() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def service_account_file(server: DriveServer, path: Path, mode: int = 0o600) -> Path:
    """A service-account key (locally generated RSA key) whose token_uri is the server."""
    private, public = _rsa_key()
    email = f"gffs-{uuid.uuid4().hex[:8]}@test-project.iam.gserviceaccount.com"
    server.add_service_account(email, public)
    return write_secret(path, {
        "type": "service_account", "project_id": "test-project",
        "private_key_id": uuid.uuid4().hex, "private_key": private, "client_email": email,
        "client_id": "1234567890", "token_uri": server.token_uri,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth"}, mode)


def make_backend(server: DriveServer, tmp_path: Path, name: str = "drive",
                 folder: str | None = None, **options) -> DriveBackend:
    cred = tmp_path / f"drive-token-{uuid.uuid4().hex[:6]}.json"
    token_file(server, cred)
    opts = {"folder": folder or f"test-{uuid.uuid4().hex[:12]}", "credentials": str(cred),
            "api_endpoint": server.url, "pack_wait": 0.02, "timeout": 5, "retry_time": 5,
            "max_creates_per_s": 0}
    opts.update(options)
    b = DriveBackend.from_config(name, opts)
    b.backoff = 0.01          # keep retry tests fast; the policy is the same
    return b


def drive_factory(request, tmp_path) -> DriveBackend:
    return make_backend(request.getfixturevalue("drive"), tmp_path)


BACKEND_FACTORIES = [pytest.param(drive_factory, id="gdrive")]
