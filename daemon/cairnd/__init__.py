"""cairnd: runs ACP coding agents and makes their work forkable."""

__version__ = "0.1.0"
