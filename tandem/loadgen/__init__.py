"""Load generation: replay request traces against any OpenAI-compatible server."""
