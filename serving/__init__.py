"""Serving helpers: TF Serving configuration, clients and a local stand-in server."""
