"""The generic engine: content loading and validation, terminology, FHIRPath, the patient record, $apply and its output, bundle and package.

It holds no rule of any protocol (those are FHIR resources under ``protocol/content/``) and imports no transport
(``service``): a second protocol runs through it without code.
"""
