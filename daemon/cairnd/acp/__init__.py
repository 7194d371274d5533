"""The editor's door (SPEC 18): `cairnd acp`, an ACP agent on stdio fronting cairnd sessions."""

from __future__ import annotations

import logging
import sys

import anyio

from cairnd.config.settings import Config

__all__ = ["run_acp"]


def run_acp(config: Config, profile: str | None) -> int:
    """Serve one editor on stdin/stdout until it closes them; stdout is the protocol's,
    so everything else goes to stderr."""
    from cairnd.acp.server import serve_editor
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="cairnd acp: %(message)s")
    config.agent(profile)  # agent_unknown before anything starts
    anyio.run(serve_editor, config, profile)
    return 0
