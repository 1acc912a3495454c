"""The review station: a web app on the failure log (see app.py)."""
