-- Room on each page of `messages` for the one UPDATE every INBOUND row gets
-- (reply_id set when its group closes), so the new row version stays on its
-- page as a heap-only tuple: no new entries in the two indexes, no page
-- split. Applies to pages written from now on.
ALTER TABLE messages SET (fillfactor = 70);
