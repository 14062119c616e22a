"""HL7 v2 orders over MLLP: the adapter between a HIS/RIS and the workitems."""
