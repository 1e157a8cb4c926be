//! Checks of the test kit and the shared storage code against the real
//! broker and the real Postgres: private brokers keep their topics across a
//! restart, and migrations are safe to run from several processes at once.

use std::time::Duration;

use chatpipe_tests::{binary, create_topic, kafka_bootstrap, PrivateBroker, TestDb};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

async fn produce(bootstrap: &str, topic: &str, key: &str) -> (i32, i64) {
    let producer: FutureProducer = chatpipe_core::kafka::producer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(bootstrap),
        Duration::from_secs(10),
        Duration::from_millis(1),
    )
    .create()
    .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (delivery.partition, delivery.offset)
}

#[tokio::test]
async fn private_broker_keeps_topics_across_restart() {
    let mut broker = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&broker.bootstrap, 3).await;
    let (partition, offset) = produce(&broker.bootstrap, &topic, "k1").await;
    assert_eq!(
        partition,
        chatpipe_core::murmur2::partition_for_key(b"k1", 3),
        "murmur2_random must place keys like the Java client"
    );
    broker.stop();
    assert!(
        tokio::net::TcpStream::connect(&broker.bootstrap)
            .await
            .is_err(),
        "a stopped broker must not accept connections"
    );
    broker.restart().await.unwrap();
    let partitions = chatpipe_core::kafka::topic_partitions(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&broker.bootstrap),
        &topic,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(partitions, Some(3));

    let consumer: BaseConsumer = chatpipe_core::kafka::consumer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&broker.bootstrap),
        "testkit",
        Duration::from_millis(10),
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(m.key(), Some(&b"k1"[..]));
            assert_eq!(m.payload(), Some(&b"hello"[..]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "record lost across restart"
        );
    }
}

#[tokio::test]
async fn shared_broker_creates_topics() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 4).await;
    assert_eq!(
        chatpipe_core::kafka::ensure_topic(
            &chatpipe_core::kafka::KafkaConnection::plaintext(&bootstrap),
            &topic,
            4,
            1,
            Duration::from_secs(10)
        )
        .await
        .unwrap(),
        chatpipe_core::kafka::TopicState::Exists
    );
    assert_eq!(
        chatpipe_core::kafka::ensure_topic(
            &chatpipe_core::kafka::KafkaConnection::plaintext(&bootstrap),
            &topic,
            5,
            1,
            Duration::from_secs(10)
        )
        .await
        .unwrap(),
        chatpipe_core::kafka::TopicState::Mismatch { actual: 4 }
    );
}

#[tokio::test]
async fn migrations_are_safe_from_several_processes_at_once() {
    // A database the admin tool creates itself, migrated by 4 processes.
    let db = TestDb::create().await.unwrap();
    let fresh = format!("{}_fresh", db.url);
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(binary("chatpipe-admin"))
                .arg("migrate")
                .env("CHATPIPE_POSTGRES_URL", &fresh)
                .env("CHATPIPE_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client = chatpipe_core::db::connect(&fresh).await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied as usize,
        chatpipe_core::db::known_migrations().len()
    );
    drop(client);
    let admin = chatpipe_core::db::connect(&db.url).await.unwrap();
    let name = fresh.rsplit('/').next().unwrap().to_owned();
    admin
        .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}
