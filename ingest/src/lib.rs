//! chatpipe ingest (not built yet).
