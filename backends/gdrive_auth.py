"""Drive credentials: loading a service-account key or installed-app token file, and
the `python -m gffs_backends.gdrive authorize` command that writes such a token."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"


def load_credentials(path: Path, where: str):
    """google-auth credentials from a service-account key or an installed-app token file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{where}: credentials file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot stat credentials file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where}: credentials file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{where}: credentials file {path} is accessible by other users "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot read credentials file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: credentials file {path} is not UTF-8 JSON") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError(f"{where}: credentials file {path} is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError(f"{where}: credentials file {path} is not a JSON object")
    if info.get("type") == "service_account":
        missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
        if missing:
            raise ValueError(f"{where}: service-account key {path} lacks {', '.join(missing)}")
        from google.oauth2 import service_account
        try:
            return service_account.Credentials.from_service_account_info(info, scopes=[DRIVE_SCOPE])
        except Exception:   # the library's message could quote key material: say nothing of it
            raise ValueError(f"{where}: service-account key {path} has an unusable "
                             f"private_key") from None
    if "installed" in info or "web" in info:
        raise ValueError(f"{where}: {path} is an OAuth client-secrets file, not a token; create "
                         f"a token file with: python -m gffs_backends.gdrive authorize {path} TOKEN")
    if info.get("type", "authorized_user") == "authorized_user":
        missing = [k for k in ("client_id", "client_secret", "refresh_token") if not info.get(k)]
        if missing:
            raise ValueError(f"{where}: installed-app token file {path} lacks {', '.join(missing)}")
        import google.oauth2.credentials
        try:
            creds = google.oauth2.credentials.Credentials.from_authorized_user_info(info)
        except Exception:
            raise ValueError(f"{where}: installed-app token file {path} is malformed") from None
        # google-auth ignores the file's token_uri (always Google's); honour it when given
        uri = info.get("token_uri")
        if isinstance(uri, str) and uri.startswith(("https://", "http://")) \
                and uri != creds.token_uri:
            creds = creds.with_token_uri(uri)
        return creds
    raise ValueError(f"{where}: credentials file {path} is neither a service-account key "
                     f"nor an installed-app token file")


def _authorize(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m gffs_backends.gdrive authorize CLIENT_SECRETS.json TOKEN_FILE",
              file=sys.stderr)
        return 2
    from google_auth_oauthlib.flow import InstalledAppFlow
    secrets_path, token_path = argv
    flow = InstalledAppFlow.from_client_secrets_file(secrets_path, scopes=[DRIVE_SCOPE])
    creds = flow.run_local_server(port=0, open_browser=False)
    info = json.loads(creds.to_json())
    info["type"] = "authorized_user"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.chmod(token_path, 0o600)
    print(f"token written to {token_path} (mode 600)")
    return 0
