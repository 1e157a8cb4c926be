//! chatpipe api (not built yet).
