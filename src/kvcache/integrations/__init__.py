"""Framework integrations: Django, Flask-Caching, FastAPI (each imports its framework)."""
