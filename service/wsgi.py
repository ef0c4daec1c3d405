"""The WSGI entry point for servers other than ``back-spasm-cds serve``: ``service.wsgi:app``, configured by the
environment and the file named by BACK_SPASM_CDS_CONFIG (the worker settings are then the server's own)."""

from service import create_app

app = create_app()
