//! Partition ownership: static assignment by ordinal (partition p belongs to
//! replica p mod N) and fencing by an owner epoch in Postgres.
//!
//! Claiming a partition bumps its epoch; every write transaction updates the
//! partition's row `WHERE owner_epoch = $mine` and must affect it, so a stale
//! owner's batch is refused (`store::write_batch` calls
//! [`fence_and_advance`] in its transaction). A fenced owner drops the
//! partition and does not reclaim it.

use tokio_postgres::GenericClient;

/// Partitions of a `partitions`-partition topic owned by `ordinal` of
/// `replicas` ([`chatpipe_core::assignment::partitions_of`], the rule the
/// operator reports by): none for an ordinal not below `replicas`.
pub fn owned_partitions(partitions: i32, replicas: u32, ordinal: u32) -> Vec<i32> {
    chatpipe_core::assignment::partitions_of(ordinal, replicas, partitions)
}

/// The ordinal in a StatefulSet pod name such as `processor-3` → 3.
pub fn ordinal_from_hostname(host: &str) -> Option<u32> {
    let (_, n) = host.rsplit_once('-')?;
    n.parse().ok()
}

/// What a claim returns: the new epoch and the committed positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// This owner's fencing token.
    pub epoch: i64,
    /// Replay starts here.
    pub resume_offset: i64,
    /// Records below this were committed (decisions may be stored).
    pub processed_offset: i64,
    /// The watermark committed with them (`None`: none yet).
    pub watermark_ms: Option<i64>,
}

/// Claims `partition` of `topic` for `owner`: bumps the epoch (fencing any
/// previous owner) and returns the committed positions.
pub async fn claim(
    client: &impl GenericClient,
    topic: &str,
    partition: i32,
    owner: &str,
) -> Result<Claim, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO processor_partitions (topic, partition, owner_epoch, owner, claimed_at)
             VALUES ($1, $2, 1, $3, clock_timestamp())
             ON CONFLICT (topic, partition) DO UPDATE
               SET owner_epoch = processor_partitions.owner_epoch + 1,
                   owner = EXCLUDED.owner, claimed_at = EXCLUDED.claimed_at
             RETURNING owner_epoch, resume_offset, processed_offset, watermark_ms",
            &[&topic, &partition, &owner],
        )
        .await?;
    Ok(Claim {
        epoch: row.get(0),
        resume_offset: row.get(1),
        processed_offset: row.get(2),
        watermark_ms: row.get(3),
    })
}

/// The committed positions of `partition` if `epoch` still owns it, `None`
/// when fenced (used to rebuild a partition after a failed batch).
pub async fn positions_if_owner(
    client: &impl GenericClient,
    topic: &str,
    partition: i32,
    epoch: i64,
) -> Result<Option<Claim>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT owner_epoch, resume_offset, processed_offset, watermark_ms FROM processor_partitions
             WHERE topic = $1 AND partition = $2 AND owner_epoch = $3",
            &[&topic, &partition, &epoch],
        )
        .await?;
    Ok(row.map(|r| Claim {
        epoch: r.get(0),
        resume_offset: r.get(1),
        processed_offset: r.get(2),
        watermark_ms: r.get(3),
    }))
}

/// Position update of one partition inside a batch transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionUpdate {
    /// Partition.
    pub partition: i32,
    /// The writer's epoch.
    pub epoch: i64,
    /// New resume offset.
    pub resume_offset: i64,
    /// New processed offset.
    pub processed_offset: i64,
    /// The engine's watermark as of these positions.
    pub watermark_ms: Option<i64>,
}

/// Inside a transaction: stores the positions of every partition whose
/// epoch still matches and returns the partitions that are fenced (whose
/// epoch moved on). The caller rolls back when any is fenced.
pub async fn fence_and_advance(
    client: &impl GenericClient,
    topic: &str,
    updates: &[PositionUpdate],
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let partitions: Vec<i32> = updates.iter().map(|u| u.partition).collect();
    let epochs: Vec<i64> = updates.iter().map(|u| u.epoch).collect();
    let resume: Vec<i64> = updates.iter().map(|u| u.resume_offset).collect();
    let processed: Vec<i64> = updates.iter().map(|u| u.processed_offset).collect();
    let watermarks: Vec<Option<i64>> = updates.iter().map(|u| u.watermark_ms).collect();
    let rows = client
        .query(
            "UPDATE processor_partitions p
                SET resume_offset = u.resume, processed_offset = u.processed,
                    watermark_ms = u.watermark, updated_at = clock_timestamp()
               FROM unnest($2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                    AS u(partition, epoch, resume, processed, watermark)
              WHERE p.topic = $1 AND p.partition = u.partition AND p.owner_epoch = u.epoch
             RETURNING p.partition",
            &[
                &topic,
                &partitions,
                &epochs,
                &resume,
                &processed,
                &watermarks,
            ],
        )
        .await?;
    let ok: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    Ok(partitions.into_iter().filter(|p| !ok.contains(p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_assignment() {
        assert_eq!(owned_partitions(6, 2, 0), vec![0, 2, 4]);
        assert_eq!(owned_partitions(6, 2, 1), vec![1, 3, 5]);
        assert_eq!(owned_partitions(3, 1, 0), vec![0, 1, 2]);
        // An ordinal beyond the replica count (a pod left from a larger
        // scale) owns nothing, instead of another ordinal's partitions.
        assert_eq!(owned_partitions(3, 0, 0), Vec::<i32>::new());
        assert_eq!(owned_partitions(6, 2, 2), Vec::<i32>::new());
    }

    #[test]
    fn ordinal_parsing() {
        assert_eq!(ordinal_from_hostname("chatpipe-processor-3"), Some(3));
        assert_eq!(ordinal_from_hostname("laptop"), None);
        assert_eq!(ordinal_from_hostname("a-b"), None);
    }
}
