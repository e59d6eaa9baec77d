"""Publication of KOS manifests to the DMP: the outbox, study assembly and the worker that sends."""
