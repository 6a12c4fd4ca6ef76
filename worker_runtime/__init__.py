"""The reference worker-runtime: a library first (core, store, execution), a server second.

Imports nothing from Django, so the Backend can run the same core in-process as its embedded runtime.
"""

PROTOCOL_VERSION = "1"
