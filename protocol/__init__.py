"""The protocol side: ``protocol.engine`` (the generic engine, no HTTP) and ``protocol/content/`` (each protocol as FHIR data)."""
