-- Hopper SQLite schema, version 3: a unique key is unique within its queue.
--
-- As on Redis, where a job's keys (its unique key's among them) all live in its queue's
-- Cluster slot: the same key on two queues names two jobs. Enqueue looks a key up by
-- (queue, unique_key). Every pair that was unique under the old index is unique under this one.

DROP INDEX jobs_unique_key;

-- At most one job per queue and unique key; jobs without a key stay out of the index.
CREATE UNIQUE INDEX jobs_queue_unique_key ON jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL;
