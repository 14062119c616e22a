"""The DIMSE gateway: a thin pynetdicom adapter over the same services as DICOMweb."""
