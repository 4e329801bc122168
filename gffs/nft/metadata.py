"""Token metadata JSON -> user.nft.* values: known fields only, cleaned, cut to the limits.

Both the ERC-721/1155 metadata schema (name, description, image, attributes)
and TZIP-21 (name, description, artifactUri/displayUri, attributes) are read.
Text is stripped of control characters and cut at a UTF-8 boundary; a media
URI with a refused scheme is an error (the metadata is hostile or broken);
anything else that does not fit is left out with a note.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gffs.nft.fetch import FOLLOWED, NftError
from gffs.nft.validate import MAX_ATTRIBUTES, MAX_TEXT, MAX_URI, URI_SCHEMES

EVM_MEDIA_FIELDS = ("image", "image_url", "animation_url")
TZIP21_MEDIA_FIELDS = ("artifactUri", "displayUri", "image", "thumbnailUri")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str, max_bytes: int) -> str:
    """Text without NUL/control characters, at most *max_bytes* of UTF-8."""
    return _CONTROL.sub("", text).encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def checked_uri(uri: Any, what: str, notes: list[str]) -> str | None:
    """*uri* if it can be stored as a user.nft.*_uri value; None (with a note) if it is
    a valid but oversized data: URI; NftError for a refused scheme or a malformed URI."""
    if not isinstance(uri, str):
        raise NftError(f"{what}: not a string")
    uri = uri.strip()
    if not uri.startswith(URI_SCHEMES):
        scheme = uri.split(":", 1)[0][:20] if ":" in uri else "scheme-less"
        raise NftError(f"{what}: {scheme}: URIs are refused (only "
                       f"{', '.join(s.rstrip(':/') for s in FOLLOWED)})")
    if _CONTROL.search(uri) or any(c.isspace() for c in uri):
        raise NftError(f"{what}: the URI contains spaces or control characters")
    if len(uri.encode()) > MAX_URI:
        if uri.startswith("data:"):
            notes.append(f"{what}: a data: URI of {len(uri)} bytes is too long to keep "
                         f"(limit {MAX_URI}); left out")
            return None
        raise NftError(f"{what}: longer than {MAX_URI} bytes")
    return uri


def values_from_metadata(meta: dict[str, Any], media_fields: tuple[str, ...],
                         notes: list[str]) -> dict[str, str]:
    """The user.nft.* values (without the prefix) that token metadata *meta* provides."""
    values: dict[str, str] = {}
    for key in ("name", "description"):
        text = meta.get(key)
        if text is None:
            continue
        if not isinstance(text, str):
            notes.append(f"metadata {key} is not text; left out")
            continue
        cleaned = clean_text(text, MAX_TEXT[key])
        if len(cleaned) < len(text):
            notes.append(f"metadata {key} shortened to {len(cleaned.encode())} bytes")
        if cleaned:
            values[key] = cleaned
    for field in media_fields:
        if isinstance(meta.get(field), str) and meta[field].strip():
            media = checked_uri(meta[field], f"metadata {field}", notes)
            if media is not None:
                values["media_uri"] = media
            break
    attrs = meta.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, list):
            notes.append("metadata attributes is not a list; left out")
        else:
            kept = [a for a in attrs if isinstance(a, dict)]
            if len(kept) < len(attrs):
                notes.append(f"{len(attrs) - len(kept)} metadata attributes are not objects; left out")
            encoded, total = _encode(kept), len(kept)
            while len(encoded.encode()) > MAX_ATTRIBUTES:
                kept = kept[:len(kept) * 3 // 4]
                encoded = _encode(kept)
            if len(kept) < total:
                notes.append(f"metadata attributes cut to the first {len(kept)} of {total} "
                             f"(limit {MAX_ATTRIBUTES} bytes)")
            if kept:
                values["attributes"] = encoded
    return values


def _encode(attrs: list[dict]) -> str:
    return json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))
