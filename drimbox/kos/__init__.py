"""The DRIM-M KOS manifest (IHE XDS-I.b, DCM 113030 MANIFEST): model, DICOM writer and reader."""
