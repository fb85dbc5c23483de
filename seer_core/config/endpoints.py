"""Endpoint URLs must never carry credentials: the one check every S3 endpoint goes through.

An endpoint is configuration; it is stored in every checkpoint (`state.pt`), handed to Ray Train
as the train loop's config and printed by `seer config`, and botocore puts it in its error
messages, which the feed logs. A `http://KEY:SECRET@host` URL would leak the secret into all of
them, so the config validation refuses one for every `*endpoint_url` key, and the services
refuse one from the environment with the same test. Messages name the key, never the value.
"""

from __future__ import annotations

import re

#: `scheme://` at the start of a URL (RFC 3986 scheme syntax).
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def has_credentials(url: str) -> bool:
    """Whether `url` holds user info (`user[:password]@`) before its path.

    Looks at the authority by hand rather than through urlsplit: a schemeless
    `KEY:SECRET@host:9000` parses as scheme `KEY`, with the secret in the path, and would pass.
    An `@` further on (in the path or query) is not user info.
    """
    rest = _SCHEME.sub("", url.strip(), count=1)
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return "@" in authority


def credentials_message(key: str) -> str:
    """The refusal, naming `key` and never the value."""
    return (f"{key}: must not carry credentials (user:password@); credentials come from the "
            "environment or the AWS credential chain only")
