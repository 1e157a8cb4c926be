//! The outbox statements against real Postgres (a fresh migrated database
//! per test): claim order, SKIP LOCKED, leases, outcomes and receipts.

mod common;

use std::time::Duration;

use chatpipe_delivery::decide::Settlement;
use chatpipe_delivery::store::Settled;
use common::{database, event_names, events, queue, row, store};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

fn sent(id: &str) -> Settlement {
    Settlement::Sent {
        provider_message_id: id.to_owned(),
    }
}

#[tokio::test]
async fn claims_the_first_queued_delivery_of_each_conversation_in_queue_order() {
    let (_db, url, pg) = database().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let a1 = queue(&pg, "tg", "1", a, "a1").await;
    let a2 = queue(&pg, "tg", "1", a, "a2").await;
    let b1 = queue(&pg, "tg", "2", b, "b1").await;
    let s = store(&url, "w1", LEASE);

    let claimed = s.claim(10).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![a1, b1]);
    assert_eq!(claimed[0].to.as_deref(), Some("1"));
    assert_eq!(claimed[0].text.as_deref(), Some("a1"));
    assert_eq!(claimed[0].attempts, 0);
    assert_eq!(claimed[0].lost_call_at, None);
    // Leased: not claimed again, and a2 waits behind a1.
    assert!(s.claim(10).await.unwrap().is_empty());

    // a1 backing off keeps a2 waiting.
    assert_eq!(s.start_attempt(a1).await.unwrap(), Some(1));
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
        code: "502".into(),
        reason: "Bad Gateway".into(),
        possible_duplicate: false,
    };
    assert_eq!(
        s.settle(a1, "tg", &retry).await.unwrap(),
        Settled::Recorded {
            receipt_status: None
        }
    );
    let again: Vec<i64> = s.claim(10).await.unwrap().iter().map(|c| c.id).collect();
    assert_eq!(again, vec![a1], "a2 must not overtake a1");

    // Once a1 is sent, a2 is due.
    assert_eq!(s.start_attempt(a1).await.unwrap(), Some(2));
    s.settle(a1, "tg", &sent("1:10")).await.unwrap();
    let next: Vec<i64> = s.claim(10).await.unwrap().iter().map(|c| c.id).collect();
    assert_eq!(next, vec![a2]);
}

#[tokio::test]
async fn two_workers_never_claim_the_same_delivery() {
    let (_db, url, pg) = database().await;
    let mut all = Vec::new();
    for i in 0..40 {
        all.push(queue(&pg, "tg", &i.to_string(), Uuid::new_v4(), "hi").await);
    }
    let w1 = store(&url, "w1", LEASE);
    let w2 = store(&url, "w2", LEASE);
    let (c1, c2) = tokio::join!(
        async {
            let mut got = Vec::new();
            for _ in 0..8 {
                got.extend(w1.claim(3).await.unwrap().into_iter().map(|c| c.id));
            }
            got
        },
        async {
            let mut got = Vec::new();
            for _ in 0..8 {
                got.extend(w2.claim(3).await.unwrap().into_iter().map(|c| c.id));
            }
            got
        }
    );
    let mut both: Vec<i64> = c1.iter().chain(c2.iter()).copied().collect();
    both.sort();
    let before = both.len();
    both.dedup();
    assert_eq!(
        before,
        both.len(),
        "a delivery was claimed twice: {c1:?} {c2:?}"
    );
    // 2 workers × 8 claims × 3 > 40: every delivery was claimed, once.
    assert_eq!(both, all);

    // A row locked by another transaction is skipped, and so is the next
    // one of its conversation.
    let (_db, url, pg) = database().await;
    let conv = Uuid::new_v4();
    let first = queue(&pg, "tg", "1", conv, "1").await;
    let _second = queue(&pg, "tg", "1", conv, "2").await;
    let other = queue(&pg, "tg", "2", Uuid::new_v4(), "x").await;
    let mut locker = chatpipe_core::db::connect(&url).await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE",
        &[&first],
    )
    .await
    .unwrap();
    let s = store(&url, "w1", LEASE);
    let got: Vec<i64> = s.claim(10).await.unwrap().iter().map(|c| c.id).collect();
    assert_eq!(got, vec![other]);
    tx.rollback().await.unwrap();
    let got: Vec<i64> = s.claim(10).await.unwrap().iter().map(|c| c.id).collect();
    assert_eq!(got, vec![first]);
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_a_lost_call_recorded() {
    let (_db, url, pg) = database().await;
    let id = queue(&pg, "tg", "1", Uuid::new_v4(), "hi").await;
    let crashed = store(&url, "crashed", Duration::from_millis(300));
    assert_eq!(crashed.claim(1).await.unwrap().len(), 1);
    assert_eq!(crashed.start_attempt(id).await.unwrap(), Some(1));
    // The worker dies here, after starting its call.
    let other = store(&url, "other", LEASE);
    assert!(other.claim(1).await.unwrap().is_empty(), "lease still held");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let claimed = other.claim(1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].lost_call_at.is_some());
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(
        event_names(&pg, id).await,
        vec!["queued", "possible_duplicate"]
    );
    assert_eq!(row(&pg, id).await.lease_owner.as_deref(), Some("other"));

    // The crashed worker's late outcomes do not overwrite the new owner's.
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
        code: "timeout".into(),
        reason: "r".into(),
        possible_duplicate: true,
    };
    assert_eq!(
        crashed.settle(id, "tg", &retry).await.unwrap(),
        Settled::Stale
    );
    assert_eq!(crashed.start_attempt(id).await.unwrap(), None);
    let fail = Settlement::Failed {
        code: "403".into(),
        reason: "r".into(),
    };
    assert_eq!(
        crashed.settle(id, "tg", &fail).await.unwrap(),
        Settled::Stale
    );
    assert_eq!(row(&pg, id).await.status, "queued");

    // A second claim of the new owner finds no lost call (the marker was
    // consumed by the claim).
    assert_eq!(other.start_attempt(id).await.unwrap(), Some(2));
    other.settle(id, "tg", &sent("1:5")).await.unwrap();
    let r = row(&pg, id).await;
    assert_eq!((r.status.as_str(), r.attempts), ("sent", 2));
    assert_eq!(r.lease_owner, None);
}

#[tokio::test]
async fn transient_failures_are_retried_then_sent() {
    let (_db, url, pg) = database().await;
    let id = queue(&pg, "wa", "1555", Uuid::new_v4(), "hi").await;
    let s = store(&url, "w", LEASE);
    s.claim(1).await.unwrap();
    s.start_attempt(id).await.unwrap();
    let retry = Settlement::Retry {
        delay: Duration::from_millis(300),
        code: "130429".into(),
        reason: "Rate limit hit".into(),
        possible_duplicate: true,
    };
    s.settle(id, "wa", &retry).await.unwrap();
    let r = row(&pg, id).await;
    assert_eq!(r.status, "queued");
    assert_eq!(r.error_code.as_deref(), Some("130429"));
    assert_eq!(r.lease_owner, None);
    assert!(
        s.claim(1).await.unwrap().is_empty(),
        "not due before its delay"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = s.claim(1).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lost_call_at, None, "an outcome was recorded");
    assert_eq!(s.start_attempt(id).await.unwrap(), Some(2));
    s.settle(id, "wa", &sent("wamid.1")).await.unwrap();
    let r = row(&pg, id).await;
    assert_eq!(r.status, "sent");
    assert_eq!(r.provider_message_id.as_deref(), Some("wamid.1"));
    assert_eq!(
        events(&pg, id).await,
        vec![
            ("queued".into(), None, "processor".into()),
            (
                "attempt_failed".into(),
                Some("130429".into()),
                "delivery".into()
            ),
            (
                "possible_duplicate".into(),
                Some("130429".into()),
                "delivery".into()
            ),
            ("sent".into(), None, "delivery".into()),
        ]
    );
}

#[tokio::test]
async fn permanent_failures_keep_their_reason() {
    let (_db, url, pg) = database().await;
    let id = queue(&pg, "tg", "1", Uuid::new_v4(), "hi").await;
    let s = store(&url, "w", LEASE);
    s.claim(1).await.unwrap();
    s.start_attempt(id).await.unwrap();
    let fail = Settlement::Failed {
        code: "403".into(),
        reason: "Forbidden: bot was blocked by the user".into(),
    };
    s.settle(id, "tg", &fail).await.unwrap();
    let r = row(&pg, id).await;
    assert_eq!(r.status, "failed");
    assert_eq!(r.error_code.as_deref(), Some("403"));
    assert_eq!(
        r.error_reason.as_deref(),
        Some("Forbidden: bot was blocked by the user")
    );
    assert_eq!(event_names(&pg, id).await, vec!["queued", "failed"]);
    assert!(s.claim(1).await.unwrap().is_empty());
}

#[tokio::test]
async fn receipts_that_arrive_before_sent_are_applied_and_status_never_moves_back() {
    let (_db, url, pg) = database().await;
    let id = queue(&pg, "wa", "1555", Uuid::new_v4(), "hi").await;
    // The provider's status webhook beat the outcome's commit.
    pg.execute(
        "INSERT INTO delivery_receipts (channel, provider_message_id, status, at)
         VALUES ('wa', 'wamid.X', 'delivered', now()), ('wa', 'wamid.X', 'sent', now())",
        &[],
    )
    .await
    .unwrap();
    let s = store(&url, "w", LEASE);
    s.claim(1).await.unwrap();
    s.start_attempt(id).await.unwrap();
    assert_eq!(
        s.settle(id, "wa", &sent("wamid.X")).await.unwrap(),
        Settled::Recorded {
            receipt_status: Some("delivered".into())
        }
    );
    let r = row(&pg, id).await;
    assert_eq!(r.status, "delivered");
    assert!(r.delivered_at_set);
    assert_eq!(
        events(&pg, id).await.last().cloned(),
        Some(("delivered".into(), None, "provider".into()))
    );
    // No outcome moves it back.
    for late in [
        sent("wamid.Y"),
        Settlement::Failed {
            code: "x".into(),
            reason: "x".into(),
        },
        Settlement::Retry {
            delay: Duration::ZERO,
            code: "x".into(),
            reason: "x".into(),
            possible_duplicate: false,
        },
    ] {
        assert_eq!(s.settle(id, "wa", &late).await.unwrap(), Settled::Stale);
        assert_eq!(row(&pg, id).await.status, "delivered");
    }
}

#[tokio::test]
async fn release_gives_claims_back() {
    let (_db, url, pg) = database().await;
    let a = queue(&pg, "tg", "1", Uuid::new_v4(), "a").await;
    let b = queue(&pg, "tg", "2", Uuid::new_v4(), "b").await;
    let s = store(&url, "w", LEASE);
    assert_eq!(s.claim(2).await.unwrap().len(), 2);
    // a: postponed (rate limit); b: released at shutdown.
    assert_eq!(s.release(&[a], Duration::from_secs(60)).await.unwrap(), 1);
    assert_eq!(s.release_unstarted().await.unwrap(), 1);
    let other = store(&url, "other", LEASE);
    let got: Vec<i64> = other
        .claim(10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(got, vec![b]);
    assert_eq!(row(&pg, a).await.attempts, 0);
}
