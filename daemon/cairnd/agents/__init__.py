"""ACP agents shipped with cairnd."""
