//! chatpipe processor (not built yet).
