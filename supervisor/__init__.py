"""janus-supervisor: one root daemon that supervises per-tenant ``ollama serve`` instances."""

__version__ = "0.1.0"
