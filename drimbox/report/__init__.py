"""The validated imaging report as the DRIMbox needs it: who, which studies, what to do (DRIM-M §4.1-4.2)."""
