"""The server's routers, one module per group of endpoints (listed in server/app.py's ``ROUTERS``)."""
