"""Index and blob storage behind small interfaces."""
