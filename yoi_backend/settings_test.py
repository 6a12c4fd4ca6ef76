"""Settings for the test suite: a throwaway data dir, fast hashing, in-memory channel layer."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("YOI_DATA_DIR", tempfile.mkdtemp(prefix="yoi-test-data-"))

from yoi_backend.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if not os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# WhiteNoise warns at every request when STATIC_ROOT is missing; tests never collect static files.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
# Tests never serve static files; finding them would rescan the static dirs for every test client.
WHITENOISE_USE_FINDERS = False
