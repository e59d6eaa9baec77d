"""The DICOM network boundary (pynetdicom): C-ECHO, C-FIND indexing, C-GET/C-MOVE, C-STORE SCP."""
