"""The S3 endpoint every seer client uses: one resolver for the feed, checkpoints, the labelled
set and the evaluator's results.

Order, decided once: the configured value (a `*endpoint_url` key or a flag), then
`SEER_S3_ENDPOINT_URL`, then `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`.

- seer's own variable first: it is what the manifests set (the `seer-env` ConfigMap), and it
  must not be overridden by an AWS variable that a base image or a shared profile happens to
  export for other tools.
- then the two AWS variables in botocore's own order (botocore >= 1.31 reads the
  service-specific `AWS_ENDPOINT_URL_S3` before the generic `AWS_ENDPOINT_URL`), so a boto3
  client and a pyarrow filesystem built from this value agree with what botocore alone would
  pick. pyarrow does not read them alike, which is why the value is always passed explicitly.

The feed used to read `AWS_ENDPOINT_URL` first and ignore `AWS_ENDPOINT_URL_S3` while
checkpoints read the order above: with both variables set, images and checkpoints went to two
different stores. Whatever the source, an endpoint with credentials in it (`user:password@`) is
refused, naming the key or variable and never the value (seer_core.config.endpoints).
"""

from __future__ import annotations

import os

from seer_core.config.endpoints import credentials_message, has_credentials
from seer_core.config.schema import ConfigError

__all__ = ["ENDPOINT_ENV", "s3_endpoint"]

#: Environment variables read when nothing is configured, highest precedence first.
ENDPOINT_ENV: tuple[str, ...] = ("SEER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                                 "AWS_ENDPOINT_URL")


def s3_endpoint(configured: str | None, *, key: str = "endpoint_url") -> str | None:
    """The configured endpoint, else the first of `ENDPOINT_ENV` set in this process's
    environment, else None (AWS's own endpoint). Raises ConfigError (a ValueError: `seer`
    prints it as a config error, exit 2), naming `key` or the variable, if the value carries
    credentials. Resolved in the process that opens the client:
    Ray workers get the variables forwarded (services.trainer.build)."""
    if configured:
        value, source = configured, key
    else:
        source = next((name for name in ENDPOINT_ENV if os.environ.get(name)), "")
        value = os.environ[source] if source else None
    if value and has_credentials(value):
        raise ConfigError(credentials_message(source))
    return value
