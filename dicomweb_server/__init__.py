"""dicomweb-server: a DICOMweb-first medical imaging archive."""

__version__ = "0.1.0"
