"""Driving real third-party ACP agents offline: scripted model stubs and helpers (see NOTES.md)."""
