"""The audit trail (DRIM-M §6). For now a structured log; the audit issue makes it hash-chained."""
