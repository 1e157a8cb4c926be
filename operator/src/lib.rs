//! chatpipe operator (not built yet).
