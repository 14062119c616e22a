"""The DICOMweb HTTP adapter (Starlette)."""
