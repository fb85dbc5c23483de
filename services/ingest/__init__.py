"""The ingest stage, in the order an image goes through it: ``read`` (endless read tasks:
random keys from the feed → bytes), ``crop`` (the ingest actor: bytes → uint8 multi-crop
batches), ``stream`` (both wired into one never-ending Ray Data execution, with its guard
rails). Bad input never stops it: every failure is one counted reason (``read.REASONS``)."""
