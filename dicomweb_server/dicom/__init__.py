"""Pure DICOM logic: no I/O, no database, no HTTP."""
