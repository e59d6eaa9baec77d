"""The unauthenticated health and status pages (no patient data: decisions, Routes)."""
