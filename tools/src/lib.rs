//! Operational tools for chatpipe, one binary each under `src/bin/`:
//! - `chatpipe-admin`: create the database, apply migrations, ensure the topic.
