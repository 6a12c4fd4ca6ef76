"""Fault suite: a real Backend (daphne) against misbehaving runtimes, bad browser input and config mistakes."""
